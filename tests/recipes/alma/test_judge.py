"""Building the judge (round 0): annotations -> fine-tune -> self-distill on base-model pairs -> accuracy table,
through the real Ray Train, vLLM and Serve paths on the tiny model; a rerun skips every stage; another run with the
same inputs takes the judge from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alma_ray.config import AlmaConfig
from alma_ray.engines.registry import Engines
from alma_ray.judge.annotations import LONGER, accuracy_table
from alma_ray.recipes.alma.judge import build_judge
from alma_ray.recipes.base import Run, open_store


@pytest.mark.usefixtures("ray_local")
def test_the_judge_is_built_distilled_and_evaluated(tiny_model: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALMA_RAY_CACHE", str(tmp_path / "cache"))  # the judge cache starts empty (models resolved)
    annotations = tmp_path / "ratings.jsonl"
    # The three answers to a question have the same length: the rating is carried by a word (7 letters each, one of
    # three per rating, varying with the question, said 8 times so that a 2-layer random model can learn it in 60
    # steps), not by the length, so a judge that learned nothing (or only "longer is better") cannot order the
    # held-out pairs.
    topics = ["rain", "the sea", "bread", "a city", "winter", "the moon", "a river", "music", "a forest", "tea",
              "a bridge", "snow"]
    words = {9: ["careful", "helpful", "precise"], 5: ["average", "typical", "partial"], 1: ["useless", "garbled",
                                                                                           "unclear"]}
    rows = [{"question_id": t, "prompt": f"tell me about {t}", "score": score,
             "response": f"{t}: " + " ".join([words[score][(i + k) % 3]] * 8)}
            for i, t in enumerate(topics) for k, score in enumerate((9, 5, 1))]
    annotations.write_text("\n".join(json.dumps(row) for row in rows))
    config = AlmaConfig.model_validate(dict(
        base_model=tiny_model, output_dir=str(tmp_path), name="judge-test",
        generation={"checkpoints": [{"name": "a", "model": tiny_model}], "max_tokens": 16},
        judge={"model": tiny_model, "build": {"annotations": str(annotations), "heldout": 0.34, "epochs": 10,
                                              "lr": 2e-3, "distill_pairs": 8}},
        train={"micro_batch": 2}, engine={"max_model_len": 1024, "dtype": "float32"}))
    seed_prompts = ["say rain", "say snow", "name a bird"]
    run = Run(open_store(config))
    with Engines(config.engine, config.resources) as engines:
        built = build_judge(config, run, engines, base=tiny_model, judge_start=tiny_model, seed_prompts=seed_prompts)
    judge, table, results = built.model, built.table, run.summary.results
    assert [r.manifest.stage for r in results] == ["annotations", "judge_sft", "distill_pairs", "distill_scores",
                                                   "judge_distill", "judge_eval"]
    assert judge.endswith("round_000/judge_distill") and Path(judge, "config.json").is_file()
    held = results[0].manifest.stats
    assert held["train"] == 24 and held["heldout"] == 12 and held["heldout_pairs"] == 12
    scores = pq.read_table(results[3].path).to_pandas()
    assert len(scores) == 8 and all(np.asarray(d).shape == (11,) for d in scores.score_dist)  # all 11 kept
    assert {(r["judge"], r["scores"]) for r in table} == {(j, k) for j in ("base", "sft", "distilled")
                                                          for k in ("integer", "real-valued")} | {(LONGER, "length")}
    # the answers to a question have the same length: the baseline ties on every pair, and no judge can side with
    # the longer answer; each row has its accuracy per kind of pair (hand-written rows: "human>human")
    assert next(r for r in table if r["judge"] == LONGER)["ties"] == 12
    assert all(r["prefers_longer"] is None and set(r["by_kind"]) == {"human>human"} for r in table)
    assert all(r["pairs"] == 12 for r in table)
    acc = {(r["judge"], r["scores"]): r["accuracy"] for r in table}
    # The fine-tuned judge orders the held-out pairs by what the ratings taught, with a margin: its most likely rating
    # differs too (integer reading, ties counted as misses). An untrained random model's scores are near-constant:
    # its real-valued order is a leaning (10 of 12 here, measured with transformers) and its integer reading ties,
    # so it cannot pass both bars.
    assert acc["sft", "real-valued"] >= 11 / 12 and acc["sft", "integer"] >= 11 / 12, accuracy_table(table)
    assert acc["base", "integer"] < 11 / 12, accuracy_table(table)
    assert "| sft | real-valued | 12 |" in accuracy_table(table)
    # the rating loss through the real loop, on one-hot targets (judge_sft) and on the judge's own distributions
    # (judge_distill: soft targets, every one of the 11 slots kept)
    losses = {stage: json.loads((tmp_path / "judge-test" / "round_000" / stage / "train_metrics.json").read_text())
              ["losses"] for stage in ("judge_sft", "judge_distill")}
    assert all(len(curve) > 1 and np.isfinite(curve).all() for curve in losses.values()), losses
    assert losses["judge_sft"][-1] < losses["judge_sft"][0] / 2
    # Ray Train's copies of each training (a restart's state, the final model) are gone once it is committed
    assert (tmp_path / "judge-test" / "round_000" / "judge_sft" / "model.safetensors").is_file()
    assert not list((tmp_path / "judge-test" / "ray_train").glob("*"))

    assert built.stage == "judge_distill"

    rerun = Run(open_store(config))
    with Engines(config.engine, config.resources) as engines:
        build_judge(config, rerun, engines, base=tiny_model, judge_start=tiny_model, seed_prompts=seed_prompts)
    assert [r.manifest.stage for r in rerun.summary.results if not r.skipped] == []
    assert len(rerun.summary.results) == 6

    # another run that would build the same judge takes it from the cache: one stage, the same weights and table
    (filed,) = (tmp_path / "cache" / "judges").iterdir()
    meta = json.loads((filed / "judge.json").read_text())
    assert meta["stage"] == "judge_distill" and meta["table"] == table and meta["built_by"].endswith("judge-test")
    other = config.model_copy(update={"name": "judge-test-2"})
    again = Run(open_store(other))
    with Engines(other.engine, other.resources) as engines:
        reused = build_judge(other, again, engines, base=tiny_model, judge_start=tiny_model,
                             seed_prompts=seed_prompts)
    assert [r.manifest.stage for r in again.summary.results] == ["judge_reused"]
    assert reused.stage == "judge_reused" and reused.table == table
    weights = [Path(d, "model.safetensors").read_bytes() for d in (judge, reused.model)]
    assert weights[0] == weights[1] and Path(reused.model, "tokenizer.json").is_file()
    assert again.summary.results[0].manifest.stats["built_by"].endswith("judge-test")
