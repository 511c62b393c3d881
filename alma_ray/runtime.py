"""Connecting to Ray: called by entry points only (the CLI, jobs/, tests), never by library code."""

from __future__ import annotations

import os

from alma_ray.placement import Plan


def configure_data() -> None:
    """Ray Data settings of every driver. Ray 2.60 reads parquet through its datasource V2 by default (a ListFiles
    operator, then ReadFiles): on 2 cores that costs 15-25 s per ``read_parquet`` even of one small file, against
    0.2 s through the V1 reader (docs/benchmarks.md, "Ray Data's parquet reader"). Every stage reads its input, so
    the V1 reader it is."""
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = False


def init_ray(plan: Plan, address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS / a `ray job submit` job), else start a local one.

    A local instance reserves enough *logical* CPUs for the largest stage of the plan: on a 2-core laptop the
    engines, train workers and Ray Data tasks take turns on the same cores instead of waiting on each other.
    """
    import ray

    configure_data()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    cpus = max(os.cpu_count() or 1, int(plan.cpus_needed + 0.999))
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=True)
