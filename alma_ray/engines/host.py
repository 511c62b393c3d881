"""The host a run's engines share: how much memory this node can still give and how many CPUs the cluster has
free (what ``Engines`` checks before it starts an engine, an app or a training on CPU), and what to tell a user when
it is short."""

from __future__ import annotations

import os
import time

import psutil
import ray

DATA_CPUS = 1.0
"""CPUs a training's Ray Data tasks (reading and tokenizing its examples) need beside its workers."""


def free_memory(need: int, wait_s: float = 15.0) -> int:
    """The bytes this node's processes can still take before Ray's memory monitor starts killing them (its
    available memory less the monitor's reserve: ``RAY_memory_usage_threshold``, 0.95 of the total by default),
    waiting up to ``wait_s`` for processes just ended to return theirs (a laptop's one node, where the driver runs
    and training will run); the wait ends early once it stops growing (``SETTLE_S``)."""
    threshold = float(os.environ.get("RAY_memory_usage_threshold", 0.95))
    deadline = time.time() + wait_s
    most, grew_at = -float("inf"), time.time()
    while True:
        memory = psutil.virtual_memory()
        free, now = int(memory.available - (1 - threshold) * memory.total), time.time()
        if free > most + 64 * 2**20:
            most, grew_at = free, now
        if free >= need or now > deadline or now - grew_at > SETTLE_S:
            return free
        time.sleep(0.5)


SETTLE_S = 3.0
"""Seconds without 64 MiB more free memory after which the processes just ended have returned theirs."""


def free_cpus(need: float, wait_s: float = 15.0) -> float:
    """The cluster's free CPUs, waiting up to ``wait_s`` for actors just given back to release theirs."""
    deadline = time.time() + wait_s
    while True:
        free = float(ray.available_resources().get("CPU", 0.0))
        if free >= need or time.time() > deadline:
            return free
        time.sleep(0.5)


ENGINE_ADVICE = ("lower engine.kv_cache_gb or run fewer engines (resources.engines_per_checkpoint, "
                 "resources.judge_engines, the checkpoints in the mix)")
TRAINING_ADVICE = "lower train.micro_batch or train.max_seq_len, or train on fewer resources.train_workers"
