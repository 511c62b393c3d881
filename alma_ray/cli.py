"""``alma-ray``: run a recipe (``recipe:`` in the config; ALMA by default), prepare the embedded models, inspect a
config.

Examples::

    alma-ray run --config jobs/configs/laptop.yaml
    alma-ray run --config jobs/configs/tiny.yaml generation.n=8 name=tiny-n8
    alma-ray config show --config jobs/configs/laptop.yaml resources.use_gpu=true
    alma-ray models prepare
    alma-ray report runs/laptop
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alma_ray.config import load_config
from alma_ray.errors import AlmaError
from alma_ray.models.registry import EMBEDDED, cache_dir, prepare_embedded

OVERRIDES_HELP = "config overrides as key=value (YAML values), e.g. generation.n=8 train.zero_stage=3"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alma-ray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run (or resume) the recipe a config describes",
                         description="Run every stage of the recipe the config names (recipe: alma by default). "
                                     "Stages already written to the run directory are skipped, so rerunning "
                                     "resumes. The plan is printed first; the last line printed is a JSON summary.")
    run.add_argument("--config", required=True, help="YAML preset, e.g. jobs/configs/laptop.yaml")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    run.add_argument("--repair", action="store_true",
                     help="recompute a committed stage whose files were damaged (missing, truncated, edited) and "
                          "what was built from it, instead of stopping with the file named")
    run.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    report = sub.add_parser("report", help="rebuild the per-round reports (report.md + plots) of a run directory",
                            description="Rebuild round_NNN/report.md and its plots from what the stages committed "
                                        "(run does this after every round).")
    report.add_argument("run_dir", help="a run directory, e.g. runs/laptop")

    cfg = sub.add_parser("config", help="inspect a config")
    cfg_sub = cfg.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the resolved config and its plan (stages and placement)")
    show.add_argument("--config", required=True, help="YAML preset, e.g. jobs/configs/laptop.yaml")
    show.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    models = sub.add_parser("models", help="the embedded models that ship inside PyPI packages")
    m_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = m_sub.add_parser("prepare", help="convert embedded models into HF folders in the cache",
                            description=f"Writes HF model folders under $ALMA_RAY_CACHE/models "
                                        f"(now {cache_dir() / 'models'}). Models: {', '.join(EMBEDDED)}.")
    prep.add_argument("names", nargs="*", help="which models, with or without embedded: (default: all)")
    prep.add_argument("--force", action="store_true", help="rebuild even if present")
    m_sub.add_parser("list", help="list embedded models and whether they are prepared")
    return p


def _run(args: argparse.Namespace) -> int:
    import ray

    from alma_ray.recipes import recipe_for
    from alma_ray.recipes.base import open_store
    from alma_ray.runtime import init_ray

    config = load_config(args.config, args.overrides)
    recipe = recipe_for(config)
    plan = recipe.plan(config)
    print(plan.describe())
    recipe.check(config)  # bad seed or annotation files stop here, before Ray starts
    with open_store(config, repair=args.repair) as store:  # the run directory's lock, held until the run ends
        init_ray(plan, args.address)
        try:
            summary = recipe.run(config, store, print)
        finally:  # Ray's thread that prints the workers' lines ends: none can split the summary line below
            ray.shutdown()
    print(f"\nrun finished in {summary.wall_s:.1f} s; outputs in {summary.run_dir}")
    sys.stdout.write(json.dumps(summary.json()) + "\n")  # one write: the line a script parses, whole
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            from alma_ray.recipes import config_of, recipe_for

            run_dir = Path(args.run_dir)
            if not (run_dir / "config.yaml").is_file() or not any(run_dir.glob("round_[0-9][0-9][0-9]")):
                print(f"alma-ray: error: {run_dir} is not a run directory (no config.yaml and round_NNN "
                      "directories)", file=sys.stderr)
                return 2
            for path in recipe_for(config_of(run_dir)).report(run_dir):
                print(path)
            return 0
        if args.command == "config":
            from alma_ray.recipes import recipe_for

            config = load_config(args.config, args.overrides)
            print(config.to_yaml())
            print(recipe_for(config).plan(config).describe())
            return 0
        if args.action == "prepare":
            for name in args.names or list(EMBEDDED):
                t0 = time.time()
                path = prepare_embedded(name, force=args.force)
                print(f"{name}: {path} ({time.time() - t0:.1f} s)")
            return 0
        for name, (_, about) in EMBEDDED.items():
            state = "prepared" if (cache_dir() / "models" / name / ".complete").exists() else "not prepared"
            print(f"embedded:{name:<24} {state:<13} {about}")
        return 0
    except AlmaError as e:
        print(f"alma-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
