"""Building the judge (round 0): annotations -> fine-tune -> self-distill on base-model pairs -> accuracy table,
through the real Ray Train, vLLM and Serve paths on the tiny model; a rerun skips every stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alma_ray.config import Config
from alma_ray.recipes.judge import accuracy_table, build_judge, distill_rows
from alma_ray.store import RunStore, StageResult


@pytest.mark.usefixtures("ray_local")
def test_the_judge_is_built_distilled_and_evaluated(tiny_model: str, tmp_path: Path) -> None:
    annotations = tmp_path / "ratings.jsonl"
    topics = ["rain", "the sea", "bread", "a city", "winter", "the moon"]
    annotations.write_text("\n".join(json.dumps(row) for t in topics for row in [
        {"question_id": t, "prompt": f"tell me about {t}", "response": f"{t}: here is a careful answer", "score": 9},
        {"question_id": t, "prompt": f"tell me about {t}", "response": f"{t} maybe", "score": 5},
        {"question_id": t, "prompt": f"tell me about {t}", "response": "no", "score": 1}]))
    config = Config.model_validate(dict(
        base_model=tiny_model, output_dir=str(tmp_path), name="judge-test",
        generation={"checkpoints": [{"name": "a", "model": tiny_model}], "max_tokens": 16},
        judge={"model": tiny_model, "build": {"annotations": str(annotations), "heldout": 0.34, "epochs": 6,
                                              "lr": 3e-3, "distill_pairs": 8}},
        train={"micro_batch": 2}, engine={"max_model_len": 1024, "dtype": "float32"}))
    store = RunStore(config.run_dir, config.digest(), config.to_yaml())
    results: list[StageResult] = []

    def add(result: StageResult) -> StageResult:
        results.append(result)
        return result

    judge, table = build_judge(config, store, base=tiny_model, judge_start=tiny_model,
                               seed_prompts=["say rain", "say snow", "name a bird"], add=add)
    assert [r.manifest.stage for r in results] == ["annotations", "judge_sft", "distill_pairs", "distill_scores",
                                                   "judge_distill", "judge_eval"]
    assert judge.endswith("round_000/judge_distill") and Path(judge, "config.json").is_file()
    held = results[0].manifest.stats
    assert held["train"] == 12 and held["heldout"] == 6 and held["heldout_pairs"] == 6
    scores = pq.read_table(results[3].path).to_pandas()
    assert len(scores) == 8 and all(np.asarray(d).shape == (11,) for d in scores.score_dist)  # all 11 kept
    assert {(r["judge"], r["scores"]) for r in table} == {(j, k) for j in ("base", "sft", "distilled")
                                                          for k in ("integer", "real-valued")}
    assert all(r["pairs"] == 6 for r in table)
    sft_real = next(r for r in table if r["judge"] == "sft" and r["scores"] == "real-valued")
    assert sft_real["accuracy"] >= 4 / 6, accuracy_table(table)  # the fine-tuned judge ranks held-out pairs
    assert "| sft | real-valued | 6 |" in accuracy_table(table)
    runs = {p.name for p in (tmp_path / "judge-test" / "ray_train").iterdir()}
    assert {"judge_sft-0", "judge_distill-0"} <= runs  # each training resumes only from its own checkpoints

    results.clear()
    build_judge(config, store, base=tiny_model, judge_start=tiny_model, seed_prompts=["say rain"], add=add)
    assert all(r.skipped for r in results) and len(results) == 6


def test_distill_targets_are_the_judges_distribution_or_its_rounded_expectation(tmp_path: Path) -> None:
    import pyarrow as pa

    dist = np.zeros(11)
    dist[[3, 9]] = [0.3, 0.5]  # unnormalized: 0.2 of the mass sat on tokens that are not ratings
    scored = {"prompt": ["p", "p", "q"], "response": ["a", "b", ""], "score": [6.75, 2.0, float("nan")],
              "score_dist": [dist.tolist(), np.eye(11)[2].tolist(), [0.0] * 11],
              "judge_flag": ["", "", "empty_response"]}
    pq.write_table(pa.table(scored), tmp_path / "scores.parquet")
    soft = distill_rows(tmp_path, "distribution")
    hard = distill_rows(tmp_path, "rounded")
    assert [r["response"] for r in soft] == [r["response"] for r in hard] == ["a", "b"]  # flagged rows left out
    np.testing.assert_allclose(soft[0]["target"], dist / 0.8, rtol=1e-6)
    assert int(np.argmax(hard[0]["target"])) == 7 and hard[0]["target"].sum() == 1  # round(6.75) = 7, one-hot
    np.testing.assert_allclose(soft[1]["target"], hard[1]["target"])
