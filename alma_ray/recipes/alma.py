"""ALMA. Round 0 builds the judge (when judge.build is set) and the prompt pool (few-shot synthesis, dedup,
embeddings, k-means: alma_ray.recipes.pool). Then one round per loop iteration: draw K prompts from K clusters
-> sample N responses -> judge -> best-of-N -> SFT the base model on D_1..D_r -> probe the new checkpoint.

Every stage is committed to the run directory (alma_ray.store) and skipped when a rerun finds it done.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.data

from alma_ray.config import LATEST, ROUND_ONE, Config, names_run_model
from alma_ray.judge_service import judge_service
from alma_ray.models.registry import resolve_model
from alma_ray.placement import plan_resources
from alma_ray.progress import StageProgress
from alma_ray.recipes.judge import accuracy_table, build_judge
from alma_ray.recipes.pool import build_pool, write_round_prompts
from alma_ray.report import write_report
from alma_ray.seeds import load_seeds, prompt_id
from alma_ray.stages.generate import generate_responses, generation_stats, sample_pool
from alma_ray.stages.judge import judge_responses
from alma_ray.stages.select import select_best
from alma_ray.stages.synthesize import heldout_and_pool
from alma_ray.store import RunStore, StageOutput, StageResult, parquet_rows
from alma_ray.train.loop import fit


def _round_model(model: str, *, latest: str | None, round_one: list[str]) -> str | None:
    """The folder a checkpoint's ``model`` names this round: a fixed model, or one this run trained (or None)."""
    if model == LATEST:
        return latest
    if model.startswith(ROUND_ONE):
        k = int(model[len(ROUND_ONE):])
        return round_one[k] if k < len(round_one) else None
    return None


@dataclass
class RunSummary:
    run_dir: Path
    results: list[StageResult] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, result: StageResult, log: Callable[[str], None]) -> StageResult:
        self.results.append(result)
        m = result.manifest
        state = "skipped (done)" if result.skipped else f"{m.wall_s:7.1f} s"
        rate = f", {m.stats['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in m.stats else ""
        log(f"[round {m.round}] {m.stage:<10} {m.rows:>7} rows  {state}{rate}  -> {result.path}")
        return result

    def json(self) -> dict[str, Any]:
        rows: dict[str, int] = {}
        wall: dict[str, float] = {}
        for r in self.results:
            rows[r.manifest.stage] = rows.get(r.manifest.stage, 0) + r.manifest.rows
            if not r.skipped:
                wall[r.manifest.stage] = round(wall.get(r.manifest.stage, 0.0) + r.manifest.wall_s, 2)
        skipped = [f"round_{r.manifest.round:03d}/{r.manifest.stage}" for r in self.results if r.skipped]
        return {"run_dir": str(self.run_dir), "rows": rows, "wall_s": wall, "skipped": skipped}


class EmptyStageError(RuntimeError):
    """A stage produced no rows; nothing is committed, and the message says what to change."""


def _write(ds: ray.data.Dataset, out: Path, **stats: Any) -> StageOutput:
    ds.write_parquet(str(out))
    rows = parquet_rows(out)
    if rows == 0:
        raise EmptyStageError(f"stage {out.name.split('.')[1]} produced no rows ({stats}); nothing was committed.")
    return StageOutput(rows=rows, stats=stats)


def _sampling_stats(out: Path, started: float) -> dict[str, Any]:
    """Manifest figures of a written sampling stage (responses, probe): tokens, tokens/s, per checkpoint."""
    stats = generation_stats(ray.data.read_parquet(str(out)))
    return {**stats, "tokens_per_s": stats["output_tokens"] / max(time.time() - started, 1e-9)}


def run_alma(config: Config, log: Callable[[str], None] = print) -> RunSummary:
    """Run (or resume) every round of ``config``; returns what each stage wrote or skipped."""
    started = time.time()
    log(plan_resources(config).describe())
    store = RunStore(config.run_dir, config.digest(), config.to_yaml())
    summary = RunSummary(store.run_dir)
    base = resolve_model(config.base_model)
    judge_models = {m.name: resolve_model(m.model) for m in config.judge.members}
    fixed = {c.name: resolve_model(c.model) for c in config.generation.checkpoints if not names_run_model(c.model)}
    seeds = load_seeds(config.synthesis.seeds, skip_bad=config.synthesis.skip_bad_seed_lines,
                       max_chars=config.synthesis.max_seed_chars)
    heldout, pool = heldout_and_pool(seeds.prompts, heldout=config.synthesis.heldout, seed=config.seed)
    log(f"seeds: {len(seeds.prompts)} prompts ({len(pool)} few-shot pool, {len(heldout)} held out), "
        f"{seeds.skipped_bad_lines} bad lines skipped")

    def add(result: StageResult) -> StageResult:
        return summary.add(result, log)

    if config.judge.build is not None:  # ALMA builds the judge once, then holds it fixed for every round
        built, table = build_judge(config, store, base=base, judge_start=judge_models[config.judge.name],
                                   seed_prompts=pool, add=add)
        judge_models[config.judge.name] = built
        log("judge accuracy on held-out preference pairs:\n" + accuracy_table(table))

    clusters, embeddings = build_pool(config, store, base=base, seeds=pool, heldout=heldout, add=add,
                                      seed_bad_lines=seeds.skipped_bad_lines)
    log(f"[round 0] report -> {write_report(store.path(0, ''))}")

    selected_dirs: list[str] = []
    latest: str | None = None
    round_one: list[str] = []
    for r in range(1, config.rounds + 1):
        prompts = write_round_prompts(config, store, r, clusters=clusters, embeddings=embeddings, add=add)

        checkpoints = dict(fixed)
        for c in config.generation.checkpoints:
            model_dir = _round_model(c.model, latest=latest, round_one=round_one)
            if model_dir is not None:
                checkpoints[c.name] = model_dir

        def write_responses(out: Path) -> StageOutput:
            t0 = time.time()
            with StageProgress("responses", prompts.manifest.rows * config.generation.n) as progress:
                ds = generate_responses(ray.data.read_parquet(str(prompts.path)), config, round_index=r,
                                        checkpoints=checkpoints, progress=progress.counter)
                result = _write(ds, out)
            result.stats.update(_sampling_stats(out, t0), checkpoints=checkpoints,
                                steady_tok_s=progress.final.get("steady_tok_s"))
            return result

        responses = add(store.run_stage(r, "responses", write_responses,
                                                {"prompts": prompts.manifest}))

        def write_scores(out: Path) -> StageOutput:
            with judge_service(config, judge_models):
                result = _write(judge_responses(ray.data.read_parquet(str(responses.path)), config), out)
            scored = ray.data.read_parquet(str(out))
            result.stats.update(mean_score=scored.mean("score"),
                                flagged=scored.filter(expr="judge_flag != ''").count())
            return result

        scores = add(store.run_stage(r, "scores", write_scores, {"responses": responses.manifest}))

        def write_selected(out: Path) -> StageOutput:
            result = _write(select_best(ray.data.read_parquet(str(scores.path)), expected_rows=scores.manifest.rows),
                            out)
            chosen = ray.data.read_parquet(str(out))
            result.stats.update(mean_best=chosen.mean("score"), mean_all=chosen.mean("mean_score"))
            return result

        selected = add(store.run_stage(r, "selected", write_selected, {"scores": scores.manifest}))
        selected_dirs.append(str(selected.path))

        init = base if config.train.init == "base" or latest is None else latest

        def write_sft(out: Path, seed: int) -> StageOutput:
            union = ray.data.read_parquet(selected_dirs).select_columns(["prompt", "response"])
            metrics = fit(union, config, objective="sft", model=init, out_dir=out, seed=seed)
            return StageOutput(rows=union.count(), stats={k: v for k, v in metrics.items() if k != "losses"})

        sft_runs = [add(store.run_stage(r, "sft" if k == 0 else f"sft_seed{k}",
                                                functools.partial(write_sft, seed=config.train.seed + k),
                                                {"selected": selected.manifest}))
                    for k in range(config.train.round_one_seeds if r == 1 else 1)]
        sft = sft_runs[0]
        latest = str(sft.path)
        if r == 1:
            round_one = [str(run.path) for run in sft_runs]

        def write_probe(out: Path) -> StageOutput:
            t0 = time.time()
            probes = ray.data.from_items([{"round": r, "prompt_id": prompt_id(p), "prompt": p} for p in heldout])
            ds = sample_pool(probes, model=latest, checkpoint=f"round_{r:03d}/sft", n=1,
                             sampling=dict(temperature=0.0, max_tokens=config.generation.max_tokens,
                                           stop=config.generation.stop or None),
                             chat=None, config=config, pool_size=1, seed_salt=f"{config.seed}:{r}:probe")
            result = _write(ds, out)
            result.stats.update(_sampling_stats(out, t0))
            return result

        if heldout:
            add(store.run_stage(r, "probe", write_probe, {"sft": sft.manifest}))
        log(f"[round {r}] report -> {write_report(store.path(r, ''))}")
    summary.wall_s = time.time() - started
    return summary
