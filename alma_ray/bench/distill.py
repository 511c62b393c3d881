"""``make measure-distill``: which self-distillation target makes the better judge (``judge.build.distill_target``).

A quality measurement, not a speed one. From a finished judge build (a run directory with ``annotations`` and
``judge_sft``, e.g. the laptop judge build of docs/judge.md), with the recipe's own functions:

1. the base model answers ``--pairs`` few-shot-pool seed prompts (``distill_pairs``);
2. the fine-tuned judge scores them on Serve, keeping each row's 11-way distribution (the ``Score`` stage);
3. training continues from the fine-tuned judge twice, on the same rows, steps and seed, once per target form:
   ``distribution`` (the judge's distribution as soft labels) and ``rounded`` (the expected score rounded, one-hot);
4. the fine-tuned judge and both distilled ones are scored on the held-out preference pairs in one Serve app
   (``heldout_accuracy``), integer and real-valued.

Each step is a stage of a run store at ``<run_dir>/measure_distill/pairs_<N>/`` (committed atomically with its
manifest; a rerun skips what is done). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGETS = ("distribution", "rounded")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run directory whose round_000 holds annotations and judge_sft")
    p.add_argument("--pairs", type=int, default=64, help="synthetic pairs to distill on (ALMA: 20k)")
    args = p.parse_args(argv)
    args.run_dir = args.run_dir.resolve()  # Ray Train workers do not run in this directory
    r0 = args.run_dir / "round_000"
    for stage in ("annotations", "judge_sft"):
        if not (r0 / stage / "_MANIFEST.json").exists():
            sys.exit(f"{r0 / stage} is missing or unfinished: build the judge first "
                     "(alma-ray run --config <preset with judge.build> rounds=0)")

    import pyarrow.parquet as pq

    from alma_ray.config import AlmaConfig, load_config
    from alma_ray.engines.registry import Engines
    from alma_ray.judge.annotations import accuracy_table
    from alma_ray.judge.serve import Panel
    from alma_ray.models.registry import resolve_model
    from alma_ray.recipes import recipe_for
    from alma_ray.recipes.alma.judge import distill, distill_pairs
    from alma_ray.recipes.base import Run
    from alma_ray.runtime import init_ray
    from alma_ray.seeds import heldout_and_pool, load_seeds
    from alma_ray.stages.judge_build import heldout_accuracy
    from alma_ray.stages.score import Score
    from alma_ray.store import RunStore

    config = load_config(args.run_dir / "config.yaml")
    if not isinstance(config, AlmaConfig):
        raise SystemExit(f"{args.run_dir} is a {config.recipe} run: measure-distill needs an ALMA run with judge.build")
    init_ray(recipe_for(config).plan(config))
    base, sft = resolve_model(config.base_model), str(r0 / "judge_sft")
    seeds = load_seeds(config.synthesis.seeds, skip_bad=config.synthesis.skip_bad_seed_lines,
                       max_chars=config.synthesis.max_seed_chars).prompts
    _, pool = heldout_and_pool(seeds, heldout=config.synthesis.heldout, seed=config.seed)
    run = Run(RunStore(args.run_dir / "measure_distill" / f"pairs_{args.pairs}", config.digest(), config.to_yaml()))
    with Engines(config.engine, config.resources) as engines:
        pairs = run.stage(0, distill_pairs(config, engines, base=base, seed_prompts=pool, m=args.pairs,
                                           name="pairs"))
        scores = run.stage(0, Score(Panel.compare(config.judge, {"sft": sft}), engines, keep=False), read=pairs)
        trained = {target: run.stage(0, distill(config, target, judge=sft, scores=scores, target=target,
                                                engines=engines,
                                                run_name=f"distill-{target}-{args.pairs}-{config.train.seed}"))
                   for target in TARGETS}
        held = [r for r in pq.read_table(r0 / "annotations").to_pylist() if r["split"] == "heldout"]
        members = {"sft": sft, **{t: str(result.path) for t, result in trained.items()}}
        table = heldout_accuracy(Panel.compare(config.judge, members), held, engines)
    (run.store.run_dir / "accuracy.json").write_text(json.dumps(table, indent=1))
    print(accuracy_table(table))
    figures: dict[str, Any] = {"bench": "distill_target", "run_dir": str(args.run_dir), "pairs": args.pairs,
                               "heldout_pairs": table[0]["pairs"], "steps": trained[TARGETS[0]].manifest.stats["steps"]}
    for r in table:
        if r["scores"] == "length":  # the longer-answer baseline
            figures["length_baseline"] = r["accuracy"]
            continue
        kind = "int" if r["scores"] == "integer" else "real"
        figures[f"{r['judge']}_{kind}"] = r["accuracy"]
        figures[f"{r['judge']}_{kind}_ties"] = r["ties"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
