"""Evaluation every round (ALMA): the round's model answers the held-out prompts (the ``probe`` stage: never in
the pool, never a few-shot example), the run's fixed judge scores the answers (``eval``, a ``Score`` stage) and so
do the evaluation judges (``eval_judges``, when ``eval.judges`` is set); with ``eval.instructions``, the model
also answers held-out IFBench prompts (``probe_ifbench``) that IFBench's checkers score, strict and loose
(``eval_ifbench``, rule judges ``ifbench_strict`` and ``ifbench_loose``). ``EvalSummary`` records per judge:
the mean score, the win rate against the previous round's model and against M1a on the same prompts (pairwise by
judge score, ties counted as half and reported; an answer beats an empty one), and the mean answer length (length
hacking shows here).

The held-out answers are a few rows a round (``synthesis.heldout``), read on the driver by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from alma_ray.stages.base import Stage, write_pylist
from alma_ray.store import StageOutput, StageResult, input_path

RUN_JUDGE = "run judge"
"""The judge column of the run's own (fixed) judge in an evaluation: the panel's weighted score."""
SAMPLED = "run judge, sampled"
"""The same judge on the sampled answers (``eval.samples`` a prompt at the generation temperature)."""


@dataclass(frozen=True)
class Evals:
    """A round's committed evaluation stages: ``eval`` (the run's judge on the probe answers) and, where set,
    ``eval_sampled`` (the run's judge on sampled answers), ``eval_judges`` and ``eval_ifbench`` (each judge of
    their panels on its own)."""

    run: StageResult
    sampled: StageResult | None = None
    judges: StageResult | None = None
    ifbench: StageResult | None = None

    def stages(self) -> list[StageResult]:
        return [s for s in (self.run, self.sampled, self.judges, self.ifbench) if s is not None]

    def scores(self) -> pd.DataFrame:
        sources = [(self.run, RUN_JUDGE), (self.sampled, SAMPLED), (self.judges, None), (self.ifbench, None)]
        return judge_scores([(s.path, label) for s, label in sources if s is not None])


def judge_scores(sources: list[tuple[Path, str | None]]) -> pd.DataFrame:
    """One row per (answer, judge): ``prompt_id``, ``judge``, ``score`` (NaN when flagged), ``empty`` (the scorer
    flagged the answer as empty), ``tokens``, ``chars``. Each source is a scored stage and the judge name of its
    panel's score, or None for each judge of its panel by name (its ``member_scores``: the evaluation judges, the
    IFBench checkers)."""
    rows = []
    for path, label in sources:
        columns = ["prompt_id", "response", "output_tokens", "score", "judge_flag", "member_scores"]
        table = pq.read_table(input_path(path), columns=columns).to_pylist()
        for r in table:
            scores = dict(r["member_scores"]) if label is None else {label: r["score"]}
            for judge, score in scores.items():
                valid = score is not None and not (isinstance(score, float) and score != score)  # NaN: flagged
                rows.append({"prompt_id": r["prompt_id"], "judge": judge,
                             "score": float(score) if valid else float("nan"),
                             "empty": r["judge_flag"] == "empty_response",  # alma_ray.judge.rubric.FLAGS
                             "tokens": int(r["output_tokens"]), "chars": len(r["response"] or "")})
    return pd.DataFrame(rows, columns=["prompt_id", "judge", "score", "empty", "tokens", "chars"])


def win_rate(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict[str, Any]:
    """Pairwise on the prompts both answered (scored by the same judge): wins, ties, losses and the win rate with a
    tie counted as half. A scored answer beats one its scorer flagged as empty (``by_default``: a model that stopped
    answering loses, it is not left out); a prompt either side could not score otherwise (flagged for another
    reason, or both empty) is left out (counted in ``unscored``)."""
    both = ours.merge(theirs, on="prompt_id", suffixes=("", "_other"))
    answered, answered_other = both.score.notna(), both.score_other.notna()
    won_by_default = int((answered & both["empty_other"]).sum())
    lost_by_default = int((answered_other & both["empty"]).sum())  # not .empty: a DataFrame property
    scored = both[answered & answered_other]
    wins = int((scored.score > scored.score_other).sum()) + won_by_default
    ties = int((scored.score == scored.score_other).sum())
    n = len(scored) + won_by_default + lost_by_default
    return {"prompts": n, "wins": wins, "ties": ties, "losses": n - wins - ties,
            "win_rate": (wins + 0.5 * ties) / n if n else None, "unscored": len(both) - n,
            "by_default": won_by_default + lost_by_default}


def summarize(this: pd.DataFrame, previous: pd.DataFrame | None, first: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per judge of ``this`` round's scores: mean score (of the answers it scored), how many it could not score
    (``unscored``: empty or flagged answers), mean length, and the win rates against the previous round's model and
    against M1a (round 1's model); None where there is nothing to compare with."""
    out = []
    for judge, ours in this.groupby("judge", sort=True):
        row: dict[str, Any] = {"judge": judge, "prompts": len(ours), "mean_score": _mean(ours.score),
                               "unscored": int(ours.score.isna().sum()), "empty": int(ours["empty"].sum()),
                               "mean_tokens": float(ours.tokens.mean()), "mean_chars": float(ours.chars.mean())}
        for name, other in (("previous", previous), ("m1a", first)):
            theirs = None if other is None else other[other.judge == judge]
            result = win_rate(ours, theirs) if theirs is not None and len(theirs) else None
            row[f"win_rate_vs_{name}"] = None if result is None else result["win_rate"]
            row[f"ties_vs_{name}"] = None if result is None else result["ties"]
        out.append(row)
    return out


def _mean(values: pd.Series) -> float | None:
    valid = values.dropna()
    return float(valid.mean()) if len(valid) else None


@dataclass
class EvalSummary(Stage):
    """The round's evaluation figures (one row per judge), from its committed ``eval`` (and ``eval_judges``)
    stages and those of the previous round and of round 1 (M1a)."""

    this: Evals
    previous: Evals | None
    first: Evals | None
    round: int
    name: str = "eval_summary"

    def reads(self) -> list[StageResult]:
        return [s for evals in (self.this, self.previous, self.first) if evals is not None for s in evals.stages()]

    def write(self, data: Any, out: Path) -> StageOutput:
        frames = [None if e is None else e.scores() for e in (self.this, self.previous, self.first)]
        assert frames[0] is not None
        rows = [{"round": self.round, **r} for r in summarize(frames[0], frames[1], frames[2])]
        write_pylist(rows, out)
        return self.counted(len(rows), table=rows)
