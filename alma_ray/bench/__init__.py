"""Benchmarks: each measures its reference in the same run and prints one JSON object on its last line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def run_bare_arm(module: str, flags: list[str], *, threads: int) -> dict[str, Any]:
    """Run ``python -m <module> --arm bare <flags>`` in a child process with ``threads`` OpenMP threads (the
    reference arm, away from Ray) and return the JSON object on its last stdout line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", module, "--arm", "bare", *flags], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_args(parser: argparse.ArgumentParser, argv: list[str] | None,
               bare: Callable[[argparse.Namespace], dict[str, Any]]) -> argparse.Namespace | None:
    """Parse a benchmark's flags (plus the hidden ``--arm``) and resolve ``--model``. In the bare child arm
    (``run_bare_arm``) run ``bare``, print its JSON object and return None."""
    parser.add_argument("--arm", choices=["all", "bare"], default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from alma_ray.models.registry import resolve_model

    args.model = resolve_model(args.model)
    if args.arm == "bare":
        print(json.dumps(bare(args)))
        return None
    return args


def start_ray(cpus: int) -> None:
    """A fresh local Ray for one arm, without the dashboard, progress bars or issue detectors."""
    import ray
    import ray.data

    from alma_ray.runtime import configure_data

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    configure_data()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.issue_detectors_config.detectors = []
