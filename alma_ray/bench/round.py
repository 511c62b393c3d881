"""``make bench-round``: what a stage costs beyond its work, on the tiny preset (a 1M-parameter model, so the work
is close to nothing and the rest is fixed cost).

Runs round 0 and ``--rounds`` rounds of a preset in one process, as ``alma-ray run`` does, into a fresh run
directory, then reads every stage's manifest: its wall time, the busy time of its engines (first batch started
to last batch done: sampling, scoring, synthesis) or of its training steps (first step to last), and the fixed
cost (the difference: engine and worker start-up, Ray Data executions, commits). Stages without an engine (dedup,
clusters, the draw, best-of-N) have no busy time: their wall time is all overhead. The last line is one JSON
object; ``fixed_share`` is the rounds' fixed cost over their wall time (the reference is the work measured in the
same run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from alma_ray.store import read_manifest


def measure(run_dir: Path) -> dict[str, Any]:
    stages: dict[str, dict[str, float]] = {}
    manifests = [read_manifest(f.parent) for f in run_dir.glob("round_*/*/_MANIFEST.json")]
    for m in sorted((m for m in manifests if m is not None), key=lambda m: (m.round, m.started_at)):
        busy = float(m.stats.get("busy_s") or 0.0)
        stages[f"r{m.round}/{m.stage}"] = {"wall_s": round(m.wall_s, 2), "busy_s": round(busy, 2),
                                           "fixed_s": round(max(0.0, m.wall_s - busy), 2)}
    rounds = [v for k, v in stages.items() if not k.startswith("r0/")]
    walls: dict[str, float] = {}
    for key, value in stages.items():
        walls[key.split("/")[0]] = walls.get(key.split("/")[0], 0.0) + value["wall_s"]
    round_walls = [w for r, w in walls.items() if r != "r0"]
    return {"bench": "round", "stages": stages,
            "median_fixed_s": round(statistics.median(v["fixed_s"] for v in stages.values()), 2),
            "fixed_share": round(sum(v["fixed_s"] for v in rounds) / max(1e-9, sum(v["wall_s"] for v in rounds)), 3),
            "round_wall_s": round(statistics.mean(round_walls), 1) if round_walls else None,
            "round0_wall_s": round(walls.get("r0", 0.0), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.round", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jobs/configs/tiny.yaml")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--address", default=None, help="a running Ray cluster (default: a local one)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)

    from alma_ray.config import load_config
    from alma_ray.recipes import recipe_for
    from alma_ray.recipes.base import open_store
    from alma_ray.runtime import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.config, [*args.overrides, f"rounds={args.rounds}", f"output_dir={tmp}"])
        recipe = recipe_for(config)
        plan = recipe.plan(config)
        t0 = time.time()
        init_ray(plan, args.address)
        ray_s = time.time() - t0
        summary = recipe.run(config, open_store(config), print)
        result = measure(summary.run_dir)
    result.update(ray_init_s=round(ray_s, 1), run_wall_s=round(summary.wall_s, 1))
    print("\n".join(f"{k:<22} wall {v['wall_s']:7.1f} s  busy {v['busy_s']:6.1f} s  fixed {v['fixed_s']:6.1f} s"
                    for k, v in result["stages"].items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
