"""Build ALMA's judge once, before round 1 (``judge.build``), as stages of round 0:

1. ``annotations``: (prompt, response, score) rows, split by question into train and held-out
   (``alma_ray.judge.annotations``: the user's file, or the synthetic demo set).
2. ``judge_sft``: fine-tune ``judge.model`` with the rating loss on the train rows (one-hot targets).
3. ``distill_pairs``: M synthetic pairs, seed prompts answered by the base model (vLLM).
4. ``distill_scores``: the fine-tuned judge scores them on Ray Serve, keeping each row's 11-way distribution.
5. ``judge_distill``: training continues on those scores (``judge.build.distill_target``: the distribution as
   soft labels, or the expected score rounded).
6. ``judge_eval``: pairwise accuracy on the held-out preference pairs for the base model and both judges, integer
   (the most likely rating) and real-valued (sum p(s) s), in one Serve app with the three as members.

The judge the rounds use is ``judge_distill`` (or ``judge_sft`` when ``distill_pairs`` is 0). With
``judge.build.reuse`` (the default) a newly built judge is filed in the cache (``alma_ray.judge.cache``), and a
later run whose inputs build the same judge takes it from there: one stage, ``judge_reused``, instead of the six.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from alma_ray.config import AlmaConfig, Checkpoint
from alma_ray.engines.registry import Engines
from alma_ray.ids import prompt_id
from alma_ray.judge import cache
from alma_ray.judge.serve import Panel
from alma_ray.recipes.base import Run
from alma_ray.stages.generate import Sample, Share
from alma_ray.stages.judge_build import Annotations, HeldoutAccuracy, ReusedJudge, distill_rows
from alma_ray.stages.score import Score
from alma_ray.stages.train import Train
from alma_ray.store import StageResult
from alma_ray.train.data import Examples, one_hot_ratings
from alma_ray.train.objectives import JudgeRating

ROUND = 0


@dataclass
class BuiltJudge:
    model: str
    """The folder of the judge the rounds use."""
    stage: str
    """Its stage (``judge_distill`` or ``judge_sft``), the judge's lineage name."""
    table: list[dict[str, Any]]
    """Held-out pairwise accuracy of the base model and each trained judge."""


def build_judge(config: AlmaConfig, run: Run, engines: Engines, *, base: str, judge_start: str,
                seed_prompts: list[str]) -> BuiltJudge:
    """Run (or resume) the judge-building stages, or take the judge from the cache (``judge.build.reuse``)."""
    build = config.judge.build
    assert build is not None
    if build.reuse:  # the cache's key: everything that builds this judge
        key_inputs = cache.key_inputs(config, judge_start=judge_start, base=base, seed_prompts=seed_prompts)
        key = cache.judge_key(key_inputs)
        if run.store.manifest(ROUND, "annotations") is None:  # this run has not started a build of its own
            cached = cache.lookup(key)
            if cached is not None or run.store.manifest(ROUND, ReusedJudge.name) is not None:
                reused = run.stage(ROUND, ReusedJudge(key, cached))
                return BuiltJudge(str(reused.path), reused.manifest.stage, reused.manifest.stats["table"])
    annotations = run.stage(ROUND, Annotations(build, seed=config.seed))
    table = pq.read_table(annotations.path).to_pylist()  # annotations are small (thousands of rows)
    train_rows = [r for r in table if r["split"] == "train"]
    examples = pa.Table.from_pylist([{"prompt": r["prompt"], "response": r["response"], "target": t.tolist()}
                                     for r, t in zip(train_rows, one_hot_ratings(r["score"] for r in train_rows))])
    sft = run.stage(ROUND, judge_training(config, "judge_sft", model=judge_start, examples=examples,
                                          made_from=[annotations], engines=engines))
    trained = [sft]
    if build.distill_pairs:
        pairs = run.stage(ROUND, distill_pairs(config, engines, base=base, seed_prompts=seed_prompts,
                                               m=build.distill_pairs))
        scores = run.stage(ROUND, Score(Panel.compare(config.judge, {"sft": str(sft.path)}), engines, keep=False,
                                        name="distill_scores"), read=pairs)
        trained.append(run.stage(ROUND, distill(config, "judge_distill", judge=str(sft.path), scores=scores,
                                                target=build.distill_target, engines=engines)))
    members = {"base": judge_start, "sft": str(sft.path),
               **({"distilled": str(trained[-1].path)} if len(trained) > 1 else {})}
    held = [r for r in table if r["split"] == "heldout"]
    evaluated = run.stage(ROUND, HeldoutAccuracy(config.judge, members, held, engines))
    built = BuiltJudge(str(trained[-1].path), trained[-1].manifest.stage, evaluated.manifest.stats["table"])
    if build.reuse:
        filed = cache.publish(key, trained[-1].path, {"table": built.table, "stage": built.stage,
                                                      "built_by": str(run.store.run_dir), "inputs": key_inputs})
        run.log(f"judge filed for reuse: {filed}")
    return built


def judge_training(config: AlmaConfig, name: str, *, model: str, examples: Examples,
                   made_from: list[StageResult], engines: Engines | None = None, run_name: str | None = None,
                   **figures: Any) -> Train:
    """A judge-training stage: the rating loss with the judge build's settings (``AlmaConfig.judge_training``)."""
    j = config.judge
    return Train(name, JudgeRating(chat=j.chat_template, max_response_chars=j.max_response_chars),
                 config.judge_training, config.resources, model=model, seed=config.train.seed, examples=examples,
                 made_from=made_from, engines=engines, run_name=run_name or f"{name}-{config.train.seed}",
                 figures_extra=figures)


def distill(config: AlmaConfig, name: str, *, judge: str, scores: StageResult, target: str,
            engines: Engines | None = None, run_name: str | None = None) -> Train:
    """Self-distillation: training continues from ``judge`` on its own scores of the distill pairs."""
    rows = distill_rows(scores.path, target)
    return judge_training(config, name, model=judge, examples=pa.Table.from_pylist(rows), made_from=[scores],
                          engines=engines, run_name=run_name, target=target)


def distill_pairs(config: AlmaConfig, engines: Engines, *, base: str, seed_prompts: list[str], m: int,
                  name: str = "distill_pairs") -> Sample:
    """``m`` synthetic pairs for self-distillation: seed prompts (cycled) answered by the base model."""
    chosen = [seed_prompts[i % len(seed_prompts)] for i in range(m)]
    gen = config.generation
    sampling = gen.sampling(Checkpoint(name="base", model=base))  # the section's settings
    return Sample(name, [Share("base", base, 1, sampling)], engines, seed_salt=f"{config.seed}:judge:distill",
                  completion_template=gen.completion_template,
                  too_long=gen.too_long,
                  prompts=[{"round": ROUND, "prompt_id": prompt_id(p) + f"-{i}", "prompt": p}
                           for i, p in enumerate(chosen)])
