"""Connecting to Ray: called by entry points only (the CLI, jobs/, tests), never by library code."""

from __future__ import annotations

import os

from alma_ray.placement import Plan


def init_ray(plan: Plan, address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS / a `ray job submit` job), else start a local one.

    A local instance reserves enough *logical* CPUs for the largest stage of the plan: on a 2-core laptop the
    engines, train workers and Ray Data tasks take turns on the same cores instead of waiting on each other.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    cpus = max(os.cpu_count() or 1, int(plan.cpus_needed + 0.999))
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=True)
