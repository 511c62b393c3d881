"""Selection from a round's scored responses: best-of-N per prompt (ALMA's D_r, ``SelectBest``), or a DPO pair per
prompt, the best against a random other or the worst (ALMA's DPO variant, ``SelectPairs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.compute as pc
from ray.data import Dataset

from alma_ray.ids import stable_seed
from alma_ray.stages.base import SMALL_ROWS, Stage, shuffle_partitions
from alma_ray.store import StageResult


def _ranked(group: pd.DataFrame, by: str = "score") -> pd.DataFrame:
    # Highest first; ties go to the lowest (checkpoint, sample_index), so reruns pick the same row.
    return group.sort_values([by, "checkpoint", "sample_index"], ascending=[False, True, True])


def pick_best(group: pd.DataFrame, length: LengthControl | None = None) -> pd.DataFrame:
    group = group.copy()
    if length is not None:
        group["controlled_score"] = group["score"] - length.slope * (group["response"].str.len() - length.mean_chars)
    best = _ranked(group, "score" if length is None else "controlled_score").head(1).copy()
    best["n_candidates"] = len(group)
    best["mean_score"] = float(group["score"].mean())
    return best


@dataclass(frozen=True)
class LengthControl:
    """The round's least-squares fit of score on response length (``Score.figures``): what length-controlled
    selection takes out of each score."""

    slope: float
    mean_chars: float


def select_best(scored: Dataset, *, expected_rows: int, length: LengthControl | None = None) -> Dataset:
    """One row per prompt: the best valid (unflagged) response, with how many it beat and their mean score; with
    ``length``, best by ``controlled_score`` (its score less the round's length slope times its distance from the
    mean length), kept as a column."""
    return per_prompt(scored, pick_best, expected_rows=expected_rows, length=length)


def per_prompt(scored: Dataset, pick: Any, *, expected_rows: int, valid: str = "judge_flag == ''",
               **kwargs: Any) -> Dataset:
    """``pick(group, **kwargs)`` of every prompt's ``valid`` rows (default: unflagged by the judge), in prompt_id
    order.

    Up to ``SMALL_ROWS`` rows one task groups them all; beyond, a hash shuffle by prompt."""
    rows = scored.filter(expr=valid)
    if expected_rows <= SMALL_ROWS:
        def each(rows: pd.DataFrame) -> pd.DataFrame:
            picked = [pick(g, **kwargs) for _, g in rows.groupby("prompt_id", sort=True)] if len(rows) else []
            return pd.concat(picked) if picked else pick(rows.head(0), **kwargs)

        return rows.map_batches(each, batch_format="pandas", batch_size=max(1, expected_rows))
    return rows.groupby("prompt_id", num_partitions=shuffle_partitions(expected_rows)).map_groups(
        pick, batch_format="pandas", fn_kwargs=kwargs)


def best_tally(table: Any) -> tuple[float, float]:
    """(sum of the chosen scores, sum of their prompts' mean scores) of a write task."""
    return float(pc.sum(table.column("score")).as_py()), float(pc.sum(table.column("mean_score")).as_py())


@dataclass
class SelectBest(Stage):
    """D_r: the best-scored response of each prompt (the input: a scores stage)."""

    length: LengthControl | None = None
    """Set: length-controlled selection (``selection: length_controlled``), from the read scores' fit."""
    name: str = "selected"
    needs: tuple[str, ...] = ("prompt_id", "score", "judge_flag", "checkpoint", "sample_index", "response")
    empty_hint: str = "the judge flagged every response: see the scores stage's judge_flag column"
    tally = staticmethod(best_tally)

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return select_best(data, expected_rows=self.input_rows or 0, length=self.length)

    def sources(self) -> dict[str, str]:
        return {} if self.length is None else {"selection": "length_controlled"}  # best: as before, no source

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        length = None if self.length is None else {"slope": self.length.slope, "mean_chars": self.length.mean_chars}
        return {"mean_best": sum(t[0] for t in tallies) / rows, "mean_all": sum(t[1] for t in tallies) / rows,
                "length_control": length}


PAIR_KEYS = ("round", "prompt_id", "cluster_id", "prompt", "judge", "judge_version")
"""The prompt's columns a DPO pair keeps (those the scored rows have)."""
PAIR_LINEAGE = ("checkpoint", "sample_index", "seed", "score")


def _pair(group: pd.DataFrame, rejected: str, salt: str) -> pd.DataFrame:
    """The prompt's DPO pair: its best response (chosen) against a random other (``rejected='random'``, drawn by a
    seed from the prompt, so a rerun draws the same) or the worst; none when fewer than two are valid."""
    ranked = _ranked(group)
    if len(ranked) < 2:
        return pd.DataFrame({c: [] for c in _pair_columns(group)})
    best = ranked.iloc[0]
    others = ranked.iloc[1:]
    if rejected == "worst":
        other = others.iloc[-1]
    else:
        other = others.iloc[stable_seed(salt, str(best["prompt_id"])) % len(others)]
    row = {k: best[k] for k in PAIR_KEYS if k in group.columns}
    row.update(chosen=best["response"], rejected=other["response"], n_candidates=len(group),
               mean_score=float(group["score"].mean()), rejected_by=rejected)
    for side, r in (("chosen", best), ("rejected", other)):
        row.update({f"{side}_{k}": r[k] for k in PAIR_LINEAGE if k in group.columns})
    return pd.DataFrame([row])


def _pair_columns(group: pd.DataFrame) -> list[str]:
    base = [k for k in PAIR_KEYS if k in group.columns]
    lineage = [f"{side}_{k}" for side in ("chosen", "rejected") for k in PAIR_LINEAGE if k in group.columns]
    return [*base, "chosen", "rejected", "n_candidates", "mean_score", "rejected_by", *lineage]


def pair_tally(table: Any) -> tuple[float, float]:
    """(sum of the chosen scores, sum of the rejected scores) of a write task."""
    return (float(pc.sum(table.column("chosen_score")).as_py() or 0.0),
            float(pc.sum(table.column("rejected_score")).as_py() or 0.0))


@dataclass
class SelectPairs(Stage):
    """ALMA's DPO variant: per prompt, TRL's ``prompt``/``chosen``/``rejected`` with both sides' checkpoint, sample,
    seed and score as lineage. Prompts with fewer than two valid responses give no pair (counted)."""

    rejected: str
    salt: str
    prompts: StageResult
    """The round's drawn prompts (for the count of prompts without a pair)."""
    name: str = "pairs"
    needs: tuple[str, ...] = ("prompt_id", "prompt", "response", "score", "judge_flag", "checkpoint", "sample_index")
    empty_hint: str = "no prompt has two valid responses: raise generation.n, or see the scores' judge_flag"
    tally = staticmethod(pair_tally)

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return per_prompt(data, _pair, expected_rows=self.input_rows or 0, rejected=self.rejected, salt=self.salt)

    def reads(self) -> list[StageResult]:
        return [self.prompts]

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        return {"mean_chosen": sum(t[0] for t in tallies) / rows, "mean_rejected": sum(t[1] for t in tallies) / rows,
                "prompts_without_pair": self.prompts.manifest.rows - rows, "rejected_by": self.rejected}
