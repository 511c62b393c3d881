"""Benchmarks: each measures its reference in the same run and prints one JSON object on its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_bare_arm(module: str, flags: list[str], *, threads: int) -> dict[str, Any]:
    """Run ``python -m <module> --arm bare <flags>`` in a child process with ``threads`` OpenMP threads (the
    reference arm, away from Ray) and return the JSON object on its last stdout line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", module, "--arm", "bare", *flags], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
