"""ALMA as published, on the tiny model through the CLI (``jobs/configs/alma-tiny.yaml``): the judge gate is
measured before any data is made and stops the run when the judge is below the bar; round 1 is seed SFT with two
seeds and samples nothing; rounds 2-3 sample M1a : M1b (: latest from round 3) and train from the base on
D_1..D_r; every round is evaluated on the held-out prompts. Then the DPO variant, and bad inputs refused before any
work. The runs are the session's (``tests/conftest.py``), which the e2e tests read too."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from alma_ray.config import RuleConfig
from alma_ray.judge.rules import RuleScorer
from tests.conftest import ALMA_TINY, DPO_VARIANT, PublishedRun, alma_cli

pytestmark = pytest.mark.e2e


def _stats(stage: Path) -> dict[str, Any]:
    return json.loads((stage / "_MANIFEST.json").read_text())["stats"]


@pytest.fixture(scope="module")
def published(alma_tiny_run: PublishedRun) -> Path:
    """The session's alma-tiny run (``tests/conftest.py``: 2 rounds by ``ray job submit``, extended to 3)."""
    lines = alma_tiny_run.first_stdout.splitlines()
    first = [next(i for i, line in enumerate(lines) if f"] {stage} " in line) for stage in ("judge_gate", "synthesis")]
    assert first[0] < first[1]  # the gate is measured before any data is made
    return alma_tiny_run.run_dir


def test_the_gate_stops_a_judge_below_the_bar_and_the_same_run_goes_on_below_it(published: Path,
                                                                                  ray_address: str) -> None:
    stopped = alma_cli(published.parent, ray_address, "judge.min_accuracy=0.8")  # the bar is not in the run's digest
    assert stopped.returncode == 2, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    error = next(line for line in stopped.stderr.splitlines() if line.startswith("alma-ray: error:"))
    judge = "ensemble(main=embedded:tiny-llama*1,short=rules-v1(max_chars=16)*50)"  # the panel, rule member named
    assert error.startswith(f"alma-ray: error: judge gate: {judge} ordered "), error
    gate = _stats(published / "round_000" / "judge_gate")
    assert f"ordered {gate['accuracy']:.3f} of 12 preference pairs right" in error  # a brevity judge: refused
    assert "on embedded:tiny-preferences, below judge.min_accuracy=0.8" in error
    table = {r["judge"]: r for r in gate["table"]}
    assert gate["pairs"] == 12 and set(table) == {"main", "short", "panel", "longer answer"}
    assert gate["unscored"] == 0 and gate["accuracy"] < 0.8  # the judge scored every pair
    assert table["short"]["prefers_longer"] == 0.0 and gate["prefers_longer"] == table["panel"]["prefers_longer"]


def test_round_one_is_seed_sft_with_two_seeds_and_samples_nothing(published: Path) -> None:
    r1 = published / "round_001"
    seed = pq.read_table(r1 / "seed_sft").to_pandas()
    assert len(seed) == 12 and (seed.origin == "written for alma_ray's tests").all()
    assert (seed.source == "embedded:tiny-sft").all() and seed.prompt_id.is_unique
    assert not (r1 / "responses").exists() and not (r1 / "prompts").exists()
    m1a, m1b = (json.loads((r1 / s / "train_metrics.json").read_text()) for s in ("sft", "sft_seed1"))
    assert m1a["losses"][-1] < m1a["losses"][0] and m1a["losses"] != m1b["losses"]  # two seeds, two models


def test_later_rounds_sample_the_mix_and_train_from_the_base_on_every_rounds_data(published: Path) -> None:
    mixes = {r: pq.read_table(published / f"round_00{r}" / "responses").to_pandas().groupby("checkpoint").size()
             .to_dict() for r in (2, 3)}
    assert mixes == {2: {"m1a": 8, "m1b": 4}, 3: {"m1a": 4, "m1b": 4, "latest": 4}}  # 4 prompts, n=3
    sft = {r: json.loads((published / f"round_00{r}" / "sft" / "_MANIFEST.json").read_text()) for r in (2, 3)}
    assert sft[2]["rows"] == 12 + 4 and sft[3]["rows"] == 12 + 4 + 4  # D_1 (seed set) + D_2 (+ D_3)
    # D_1 (round 1's seed rows), D_2 and D_3 by their rounds, and the model it starts from (the base)
    assert set(sft[3]["input_hashes"]) == {"round_001/seed_sft", "round_002/selected", "round_003/selected",
                                           "model:tiny-llama"}
    assert set(sft[2]["input_hashes"]) == {"round_001/seed_sft", "round_002/selected", "model:tiny-llama"}
    checkpoints = _stats(published / "round_003" / "responses")["checkpoints"]
    assert checkpoints["latest"].endswith("round_002/sft") and checkpoints["m1b"].endswith("round_001/sft_seed1")


def _answers(run_dir: Path, r: int) -> dict[str, tuple[float | None, bool]]:
    """Round ``r``'s held-out answers as the run judge scored them: prompt -> (score or None, flagged empty)."""
    rows = pq.read_table(run_dir / f"round_00{r}" / "eval").to_pandas()
    return {p.prompt_id: (None if p.judge_flag else float(p.score), p.judge_flag == "empty_response")
            for p in rows.itertuples()}


def _win_rate(ours: dict[str, tuple[float | None, bool]], theirs: dict[str, tuple[float | None, bool]]
              ) -> float | None:
    """By hand: pairwise on the shared prompts, a tie half a win, an answer beats an empty one, other unscored
    prompts left out."""
    wins = n = 0.0
    for pid in ours.keys() & theirs.keys():
        (a, a_empty), (b, b_empty) = ours[pid], theirs[pid]
        if a is not None and b is not None:
            n, wins = n + 1, wins + (1.0 if a > b else 0.5 if a == b else 0.0)
        elif a is not None and b_empty:
            n, wins = n + 1, wins + 1
        elif b is not None and a_empty:
            n += 1
    return wins / n if n else None


def test_every_round_is_evaluated_against_the_previous_and_m1a(published: Path) -> None:
    tables = {r: _stats(published / f"round_00{r}" / "eval_summary")["table"] for r in range(4)}
    answers = {r: _answers(published, r) for r in range(4)}
    for r, rows in tables.items():
        (row,) = [row for row in rows if row["judge"] == "run judge"]
        assert row["prompts"] == 8 and row["mean_tokens"] > 0 and row["empty"] == 0, r
        scored = [score for score, _ in answers[r].values() if score is not None]
        assert row["mean_score"] == pytest.approx(np.mean(scored) if scored else None), r
        previous = _win_rate(answers[r], answers[r - 1]) if r > 0 else None
        assert row["win_rate_vs_previous"] == pytest.approx(previous), r  # round 1 is compared with the base model
        m1a = _win_rate(answers[r], answers[1]) if r > 1 else None
        assert row["win_rate_vs_m1a"] == pytest.approx(m1a), r
    probe = pq.read_table(published / "round_000" / "probe").to_pandas()
    assert (probe.checkpoint == "base").all()
    assert set(pq.read_table(published / "round_002" / "probe").to_pandas().checkpoint) == {"round_002/sft"}
    rounds = (published / "rounds.md").read_text()
    assert rounds.count("| run judge |") == 4 and "win rate vs M1a" in rounds and "score~length r" in rounds
    for r in range(4):  # the verifiable instructions: IFBench's checkers on held-out IFBench prompts, row by row
        checked = pq.read_table(published / f"round_00{r}" / "eval_ifbench").to_pandas()
        assert len(checked) == 4 and checked.prompt_id.str.startswith("ifbench-").all()
        for kind in ("strict", "loose"):
            ours = [dict(m)[f"ifbench_{kind}"] for m in checked.member_scores]
            theirs = [x["score"] for x in RuleScorer(RuleConfig(ifbench=kind)).score(
                list(checked.prompt), list(checked.response), list(checked.instructions))]
            np.testing.assert_allclose(ours, theirs, equal_nan=True, err_msg=f"round {r} {kind}")
            row = next(row for row in tables[r] if row["judge"] == f"ifbench_{kind}")
            valid = [x for x in theirs if not math.isnan(x)]
            assert row["mean_score"] == pytest.approx(np.mean(valid) if valid else None), (r, kind)
    stats = _stats(published / "round_002" / "scores")  # how the run judge's scores go with length, recomputed
    rows = pq.read_table(published / "round_002" / "scores").to_pandas().query("judge_flag == ''")
    chars = rows.response.str.len().to_numpy(dtype=float)
    assert stats["mean_chars"] == pytest.approx(chars.mean())
    corr = None if rows.score.std() == 0 or chars.std() == 0 else np.corrcoef(rows.score, chars)[0, 1]
    assert stats["score_length_corr"] == pytest.approx(corr, abs=1e-4)
    assert "## Evaluation: held-out prompts" in (published / "round_003" / "report.md").read_text()


MARGIN_ROUND_2, MARGIN_ROUND_3 = 2.0, 1.5
"""How far P must rise from M1a, set from measured runs of this preset (2026-12-08, docs/alma.md): M1a 3.31; the
loop as written, round 2 6.65 and round 3 6.24; the same loop picking the lowest score, 4.39 and 5.72. Training on
more rows that end in EOS shortens the answers whatever the judge prefers, so only round 2 tells the two apart
(midway: 2.0); round 3's bound checks that the move lasts."""
DPO_STEPS = 2
"""The DPO variant's steps in round 2: 4 pairs on 2 ranks of micro-batch 2, train.epochs=2."""
SHORT = RuleConfig(max_chars=16)
"""The property P the preset's rule member prefers (short answers); the DPO variant's member prefers the opposite."""


def _p(run_dir: Path, r: int) -> float:
    """P of round ``r``'s held-out answers: their mean score by the ``SHORT`` rules, recomputed from the text."""
    answers = pq.read_table(run_dir / f"round_00{r}" / "probe").to_pandas()
    assert len(answers) == 8 and (answers.output_tokens > 0).all()  # none empty: every answer counts
    return float(np.mean([x["score"] for x in RuleScorer(SHORT).score(list(answers.prompt), list(answers.response))]))


def test_best_of_n_moves_the_model_the_way_its_judge_prefers(published: Path) -> None:
    """The run's judge leads with a rule member that prefers short answers; best-of-N picks them and round r
    trains on D_1..D_r: the held-out answers get shorter than M1a's by margins measured on this preset
    (docs/alma.md). A loop that picks the lowest score fails both the picks' check and round 2's margin (measured:
    P 4.39 against 5.31 asked)."""
    for r in (2, 3):
        selected = pq.read_table(published / f"round_00{r}" / "selected").to_pandas()
        scores = pq.read_table(published / f"round_00{r}" / "scores").to_pandas().query("judge_flag == ''")
        assert selected.response.str.len().mean() < scores.response.str.len().mean(), r  # the picks: the short ones
    p = {r: _p(published, r) for r in (1, 2, 3)}
    assert p[2] >= p[1] + MARGIN_ROUND_2 and p[3] >= p[1] + MARGIN_ROUND_3, p


def _margins(model: str, pairs: Any) -> Any:
    """log p(chosen) - log p(rejected) under ``model``, the pairs encoded as the DPO variant's training encodes them."""
    from transformers import AutoTokenizer

    from alma_ray.config import load_config
    from alma_ray.train.data import ReferenceLogprobs
    from alma_ray.train.objectives import DPO

    config = load_config(ALMA_TINY, list(DPO_VARIANT))
    tok = AutoTokenizer.from_pretrained(model)
    tokenize = DPO.of(config.train, completion_template=config.generation.completion_template).tokenizer_fn(
        model=model, max_seq_len=config.train.max_seq_len)
    scored = ReferenceLogprobs(model, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                               tokenize)({c: pairs[c].to_numpy() for c in ("prompt", "chosen", "rejected")})
    return scored["chosen_ref_logp"] - scored["rejected_ref_logp"]


def test_the_dpo_variant_trains_m1a_on_best_against_random_pairs(dpo_run: tuple[Path, dict]) -> None:
    r2 = dpo_run[0] / "round_002"  # tests/conftest.py DPO_VARIANT: the smallest run
    pairs = pq.read_table(r2 / "pairs").to_pandas()
    assert len(pairs) == 4 and (pairs.chosen_score >= pairs.rejected_score).all()
    assert (pairs.chosen != pairs.rejected).all() and set(pairs.rejected_by) == {"random"}
    assert {"prompt", "chosen", "rejected", "chosen_checkpoint", "rejected_sample_index", "judge"} <= set(pairs)
    assert not (r2 / "selected").exists() and not (r2 / "sft").exists()
    metrics = json.loads((r2 / "dpo" / "train_metrics.json").read_text())
    assert metrics["steps"] == DPO_STEPS and json.loads((r2 / "dpo" / "_MANIFEST.json").read_text())["rows"] == 4
    # The policy starts as its reference (M1a, log-probs precomputed in a Ray Data pass): every margin is 0 and the
    # loss is exactly log 2. Its steps (4 pairs, 2 ranks, 2 epochs) raised the chosen answers' log-prob over the
    # rejected ones against M1a: DPO's implicit reward margin, recomputed here from the two saved folders.
    assert metrics["losses"][0] == pytest.approx(math.log(2), abs=1e-4)
    m1a, dpo = (_margins(str(d), pairs) for d in (dpo_run[0] / "round_001" / "sft", r2 / "dpo"))
    assert (dpo - m1a).mean() > 0, (dpo, m1a)
    assert set(pq.read_table(r2 / "probe").to_pandas().checkpoint) == {"round_002/dpo"}  # vLLM loads it


def test_the_dpo_variants_pairs_follow_its_inverted_rule(dpo_run: tuple[Path, dict]) -> None:
    """The DPO variant's judge leads with the inverted rule (longer is better): every pair chooses the longer
    answer, and round 2's model answers longer than M1a. The second is no proof of the loop on its own: the same
    DPO with pairs that choose the shorter answer made answers longer still (P 3.31 -> 0.66 against 1.35,
    docs/alma.md); the pairs' check is what fails then."""
    pairs = pq.read_table(dpo_run[0] / "round_002" / "pairs").to_pandas()
    assert (pairs.chosen.str.len() > pairs.rejected.str.len()).all()
    p = {r: _p(dpo_run[0], r) for r in (1, 2)}
    assert p[2] < p[1], p


def test_bad_inputs_stop_before_any_work(tmp_path: Path, ray_address: str) -> None:
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    proc = alma_cli(tmp_path, ray_address, f"seed_sft.sources=[{bad}]")
    assert proc.returncode == 2 and f"{bad}:2: 'response' must be a non-empty string" in proc.stderr, proc.stderr
    proc = alma_cli(tmp_path, ray_address, "judge.gate_pairs=[embedded:nope]")
    assert proc.returncode == 2 and "unknown embedded preference set" in proc.stderr, proc.stderr
    proc = alma_cli(tmp_path, ray_address, "generation.checkpoints=[{name: m1c, model: 'round_one:2'}]")
    assert proc.returncode == 2 and "round_one:2" in proc.stderr, proc.stderr
    assert not (tmp_path / "alma-tiny").exists() or not list((tmp_path / "alma-tiny").glob("round_*/*/_MANIFEST.json"))


def test_the_evaluation_judges_score_every_rounds_answers(dpo_run: tuple[Path, dict]) -> None:
    """``eval.judges`` (the DPO variant has one: ``ends``, a rule judge that did not select the data) scores each
    round's held-out answers beside the run's judge, row for row as its rules score them; the summary has a row for
    it, its mean score the mean of its scores."""
    ends = RuleScorer(RuleConfig(ends_sentence=True))
    for r in range(3):
        stage = dpo_run[0] / f"round_00{r}"
        judged = pq.read_table(stage / "eval_judges").to_pandas()
        probe = pq.read_table(stage / "probe").to_pandas()
        assert sorted(judged.prompt_id) == sorted(probe.prompt_id) and len(judged) == 8
        members = [dict(m) for m in judged.member_scores]
        assert all(set(m) == {"ends"} for m in members)
        expected = [x["score"] for x in ends.score(list(judged.prompt), list(judged.response))]
        np.testing.assert_allclose([m["ends"] for m in members], expected, equal_nan=True)
        assert set(judged.judge) == {"rules-v1(ends_sentence)"}
        table = {row["judge"]: row for row in _stats(stage / "eval_summary")["table"]}
        assert set(table) == {"run judge", "ends"}
        scores = [m["ends"] for m, flag in zip(members, judged.judge_flag) if not flag]
        assert table["ends"]["mean_score"] == pytest.approx(np.mean(scores) if scores else None)
