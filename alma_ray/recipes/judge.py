"""Build ALMA's judge once, before round 1 (``judge.build``), as stages of round 0:

1. ``annotations``: (prompt, response, score) rows, split by question into train and held-out
   (``alma_ray.annotations``: the user's file, or the synthetic demo set).
2. ``judge_sft``: fine-tune ``judge.model`` with the rating loss on the train rows (one-hot targets).
3. ``distill_pairs``: M synthetic pairs, seed prompts answered by the base model (vLLM).
4. ``distill_scores``: the fine-tuned judge scores them on Ray Serve, keeping each row's 11-way distribution.
5. ``judge_distill``: training continues on those scores (``judge.build.distill_target``: the distribution as
   soft labels, or the expected score rounded).
6. ``judge_eval``: pairwise accuracy on the held-out preference pairs for the base model and both judges, integer
   (the most likely rating) and real-valued (sum p(s) s), in one Serve app with the three as members.

The judge the rounds use is ``judge_distill`` (or ``judge_sft`` when ``distill_pairs`` is 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from alma_ray.annotations import (
    demo_annotations,
    load_annotations,
    pairwise_accuracy,
    preference_pairs,
    split_by_question,
)
from alma_ray.config import Checkpoint, Config, JudgeBuildConfig
from alma_ray.judge_service import judge_service
from alma_ray.seeds import prompt_id
from alma_ray.stages.generate import sample_pool
from alma_ray.stages.judge import judge_responses
from alma_ray.store import RunStore, StageOutput, StageResult, parquet_rows
from alma_ray.train.data import one_hot_ratings
from alma_ray.train.loop import fit

ROUND = 0
DEMO = "embedded:mt-bench-synthetic"


def _annotations(build: JudgeBuildConfig, seed: int) -> list[dict[str, Any]]:
    return demo_annotations(seed) if build.annotations == DEMO else load_annotations(build.annotations)


def _write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "part-0.parquet")


def judge_train_config(config: Config, build: JudgeBuildConfig) -> Config:
    """The training settings of the judge (its own epochs and lr; the judge prompt needs a long context)."""
    train = config.train.model_copy(update={"epochs": build.epochs, "lr": build.lr,
                                            "max_seq_len": config.engine.max_model_len, "bucket_window": 1})
    return config.model_copy(update={"train": train})


def _serving(config: Config, members: dict[str, str]) -> Config:
    """The config of a judge app whose judges are ``members`` (name -> folder), the first as the main one."""
    from alma_ray.config import JudgeMember

    (name, model), *rest = members.items()
    return config.model_copy(update={"judge": config.judge.model_copy(update={
        "name": name, "model": model, "weight": 1.0,
        "ensemble": [JudgeMember(name=n, model=m, chat_template=config.judge.chat_template) for n, m in rest]})})


def build_judge(config: Config, store: RunStore, *, base: str, judge_start: str, seed_prompts: list[str],
                add: Callable[[StageResult], StageResult]) -> tuple[str, list[dict[str, Any]]]:
    """Run (or resume) the judge-building stages; returns the folder of the judge the rounds use and the
    held-out accuracy table."""
    build = config.judge.build
    assert build is not None
    tconfig = judge_train_config(config, build)

    def write_annotations(out: Path) -> StageOutput:
        rows = _annotations(build, config.seed)
        train, held = split_by_question(rows, build.heldout, seed=config.seed)
        _write_rows([{**r, "split": "train"} for r in train] + [{**r, "split": "heldout"} for r in held], out)
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["method"]] = methods.get(r["method"], 0) + 1
        return StageOutput(rows=len(rows), stats={"train": len(train), "heldout": len(held), "methods": methods,
                                                  "heldout_pairs": len(preference_pairs(held)),
                                                  "source": build.annotations})

    annotations = add(store.run_stage(ROUND, "annotations", write_annotations))
    table = pq.read_table(annotations.path).to_pylist()
    train_rows = [r for r in table if r["split"] == "train"]
    held_rows = [r for r in table if r["split"] == "heldout"]

    def write_sft(out: Path) -> StageOutput:
        rows = ray.data.from_items([{"prompt": r["prompt"], "response": r["response"], "target": t}
                                    for r, t in zip(train_rows, one_hot_ratings(r["score"] for r in train_rows))])
        metrics = fit(rows, tconfig, objective="judge", model=judge_start, out_dir=out, seed=config.train.seed,
                      run_name=f"judge_sft-{config.train.seed}")
        return StageOutput(rows=len(train_rows), stats={k: v for k, v in metrics.items() if k != "losses"})

    sft = add(store.run_stage(ROUND, "judge_sft", write_sft, {"annotations": annotations.manifest}))
    judge = str(sft.path)

    if build.distill_pairs:
        def write_pairs(out: Path) -> StageOutput:
            distill_pairs(config, base=base, seed_prompts=seed_prompts, m=build.distill_pairs).write_parquet(str(out))
            return StageOutput(rows=parquet_rows(out), stats={})

        pairs = add(store.run_stage(ROUND, "distill_pairs", write_pairs, {"judge_sft": sft.manifest}))

        def write_scores(out: Path) -> StageOutput:
            score_pairs(config, judge, pairs.path, out)
            scored = pq.read_table(out, columns=["judge_flag", "score"]).to_pandas()
            return StageOutput(rows=len(scored), stats={"flagged": int((scored.judge_flag != "").sum()),
                                                        "mean_score": float(scored.score.mean())})

        scores = add(store.run_stage(ROUND, "distill_scores", write_scores, {"distill_pairs": pairs.manifest}))

        def write_distill(out: Path) -> StageOutput:
            rows = distill_rows(scores.path, build.distill_target)
            metrics = fit(ray.data.from_items(rows), tconfig, objective="judge", model=judge, out_dir=out,
                          seed=config.train.seed, run_name=f"judge_distill-{config.train.seed}")
            return StageOutput(rows=len(rows), stats={"target": build.distill_target,
                                                      **{k: v for k, v in metrics.items() if k != "losses"}})

        distill = add(store.run_stage(ROUND, "judge_distill", write_distill, {"distill_scores": scores.manifest}))
        final = str(distill.path)
        trained = {"judge_sft": sft.manifest, "judge_distill": distill.manifest}
    else:
        final = judge
        trained = {"judge_sft": sft.manifest}

    def write_eval(out: Path) -> StageOutput:
        members = {"base": judge_start, "sft": judge, **({"distilled": final} if final != judge else {})}
        rows = heldout_accuracy(config, members, held_rows)
        _write_rows(rows, out)
        (out / "accuracy.json").write_text(json.dumps(rows, indent=1))
        return StageOutput(rows=len(rows), stats={"table": rows})

    evaluated = add(store.run_stage(ROUND, "judge_eval", write_eval, trained))
    return final, evaluated.manifest.stats["table"]


def distill_pairs(config: Config, *, base: str, seed_prompts: list[str], m: int) -> ray.data.Dataset:
    """``m`` synthetic pairs for self-distillation: seed prompts (cycled) answered by the base model."""
    chosen = [seed_prompts[i % len(seed_prompts)] for i in range(m)]
    prompts = ray.data.from_items([{"round": ROUND, "prompt_id": prompt_id(p) + f"-{i}", "prompt": p}
                                   for i, p in enumerate(chosen)])
    sampling = config.generation.sampling(Checkpoint(name="base", model=base))  # the section's settings
    return sample_pool(prompts, model=base, checkpoint="base", n=1, sampling=sampling, chat=None,
                       config=config, pool_size=1, seed_salt=f"{config.seed}:judge:distill")


def score_pairs(config: Config, judge: str, pairs: Path, out: Path) -> None:
    """Score the (prompt, response) rows at ``pairs`` with the judge folder ``judge`` on Serve; write to ``out``."""
    members = {"sft": judge}
    scoring = _serving(config, members)
    with judge_service(scoring, members):
        judge_responses(ray.data.read_parquet(str(pairs)), scoring).write_parquet(str(out))


def distill_rows(scores: Path, target: str) -> list[dict[str, Any]]:
    """Training rows from the judge's scores of the distill pairs (flagged rows left out): the target is the
    judge's 11-way distribution as soft labels (``distribution``) or its expected score rounded (``rounded``)."""
    scored = pq.read_table(scores, columns=["prompt", "response", "score", "score_dist", "judge_flag"]).to_pylist()
    rows = []
    for r in scored:
        if r["judge_flag"]:
            continue
        dist = np.asarray(r["score_dist"], dtype=np.float32)
        label = dist / dist.sum() if target == "distribution" else one_hot_ratings([int(round(r["score"]))])[0]
        rows.append({"prompt": r["prompt"], "response": r["response"], "target": label})
    return rows


def heldout_accuracy(config: Config, members: dict[str, str], held_rows: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    """Pairwise accuracy on the held-out preference pairs of every judge in ``members`` (name -> folder),
    integer (the most likely rating) and real-valued, scored in one Serve app with all of them as members."""
    pairs = preference_pairs(held_rows)
    texts = sorted({(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")})
    scoring = _serving(config, members)
    with judge_service(scoring, members):  # held-out pairs only: small enough to collect
        scored = judge_responses(ray.data.from_items([{"prompt": p, "response": r} for p, r in texts]),
                                 scoring).take_all()
    lookup = {(r["prompt"], r["response"]): r for r in scored}
    rows = []
    for member in members:
        for kind, key in (("integer", "member_score_ints"), ("real-valued", "member_scores")):
            def value(prompt: str, response: str, member: str = member, key: str = key) -> float:
                v = float(lookup[(prompt, response)][key][member])
                return float("nan") if (key == "member_score_ints" and v < 0) else v

            acc = pairwise_accuracy(np.array([value(p["prompt"], p["chosen"]) for p in pairs]),
                                    np.array([value(p["prompt"], p["rejected"]) for p in pairs]))
            rows.append({"judge": member, "scores": kind, **acc.row()})
    return rows


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """The judge table as markdown (for the log and the report)."""
    lines = ["| judge | scores | held-out pairs | accuracy | ties | accuracy (ties = 1/2) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['judge']} | {r['scores']} | {r['pairs']} | {r['accuracy']:.3f} | {r['ties']} | "
              f"{r['accuracy_half_ties']:.3f} |" for r in rows]
    return "\n".join(lines)
