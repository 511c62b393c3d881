"""Shared fixtures: an isolated model cache, the tiny random Llama (built in seconds), and one local Ray instance
for the whole session (every test that needs Ray, and the CLI runs of the e2e tests, share it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session prepares models into its own cache, as a fresh machine would."""
    cache = Path(os.environ.get("ALMA_RAY_TEST_CACHE") or tmp_path_factory.mktemp("alma_cache"))
    os.environ["ALMA_RAY_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> str:
    from alma_ray.models.registry import resolve_model

    return resolve_model("embedded:tiny-llama")


@pytest.fixture(scope="session")
def ray_local() -> Any:
    """One local Ray instance for the session, on loopback (with the dashboard: Ray Train and the state API need
    it). Started once: a Ray start costs 10-20 s on 2 cores, and two instances at once get workers OOM-killed."""
    import ray

    from alma_ray.runtime import configure_data

    configure_data()
    # Logical CPUs, not cores: a run keeps its engines up beside training (alma_ray.stages.engines), and the
    # tiny preset's plan needs 5; engines and workers take turns on the 2 cores.
    ray.init(num_cpus=6, include_dashboard=True, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local: Any) -> str:
    """The session's Ray address, for a CLI run to join (``--address``) instead of starting a second instance."""
    return str(ray_local.get_runtime_context().gcs_address)
