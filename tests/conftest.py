"""Shared fixtures: an isolated model cache, the tiny random Llama (built in seconds), and one Ray cluster for the
whole session, started with ``ray start --head`` and token authentication as the README says (every test that
needs Ray, the CLI runs of the e2e tests and their ``ray job submit`` share it)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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

# Token authentication for the session's cluster (``ray_head``): Ray reads these when it is first imported, so they
# are set here, before any test module imports it. The token is the session's own (never ~/.ray/auth_token).
_AUTH = Path(tempfile.mkdtemp(prefix="alma-ray-auth-")) / "auth_token"
_AUTH.write_text(secrets.token_hex(32))
_AUTH.chmod(0o600)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(_AUTH),
                  PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


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


RAY_FIXTURES = {"ray_head", "ray_local", "ray_address", "serve_port"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the session's cluster carries ``ray`` (so ``make test-fast`` leaves it out); ``gpu``
    tests are skipped without a CUDA device."""
    cuda = None
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalHead:
    """The session's Ray cluster: a ``ray start --head`` on loopback with token authentication, as the README
    tells users to start one (Ray 2.60)."""

    gcs: str
    dashboard: str
    env: dict[str, str]
    """What a client needs: RAY_AUTH_MODE=token, the token's file, the venv first on PATH."""


@pytest.fixture(scope="session")
def ray_head(model_cache: Path) -> Any:
    """Start the head (the driver of every test joins it; `ray job submit` submits to it), stop it at the end.
    A Ray start costs 10-20 s on 2 cores, and two instances at once get workers OOM-killed: one per session.
    Logical CPUs, not cores: a run keeps its engines up beside training (alma_ray.engines), and the tiny
    preset's plan needs 5; engines and workers take turns on the 2 cores. The cluster has a temporary directory
    of its own, and only its processes are stopped at the end: a Ray the user started is left alone."""
    port, dashboard_port, agent_port = _free_port(), _free_port(), _free_port()
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's sockets live under it
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=6",
                              f"--dashboard-agent-listen-port={agent_port}",  # not 52365: `ray job submit` needs
                              # the agent's HTTP server, and a cluster still stopping (or a neighbour's) may hold it
                              "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    head = LocalHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}",
                     {k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PATH")})
    try:
        yield head
    finally:
        stop_cluster(temp_dir)


def stop_cluster(temp_dir: Path, grace_s: float = 5) -> None:
    """End the processes of the Ray cluster whose temporary directory is ``temp_dir`` (every Ray process names
    its session directory on its command line), SIGTERM then SIGKILL; other Rays on the host are untouched."""
    import psutil

    def ours(p: psutil.Process) -> bool:
        try:
            return any(str(temp_dir) in arg for arg in p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    procs = [p for p in psutil.process_iter() if p.pid != os.getpid() and ours(p)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@pytest.fixture(scope="session")
def ray_local(ray_head: LocalHead) -> Any:
    """This test process joined to the session's cluster as a driver."""
    import ray

    from alma_ray.runtime import configure_data

    configure_data()
    ray.init(address=ray_head.gcs, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_local: Any) -> int:
    """Serve's HTTP proxy on the session's cluster, on a free port of 127.0.0.1 chosen here: every app of the
    session (and of the CLI runs that join the cluster) listens there, never on a fixed port of the host."""
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@pytest.fixture(scope="session")
def ray_address(ray_local: Any, ray_head: LocalHead, serve_port: int) -> str:
    """The session's Ray address, for a CLI run to join (``--address``) instead of starting a second instance."""
    return ray_head.gcs


ALMA_TINY = REPO / "jobs" / "configs" / "alma-tiny.yaml"
DPO_VARIANT = ("name=alma-tiny-dpo", "train.objective=dpo", "rounds=2", "train.round_one_seeds=1",
               "generation.checkpoints=[{name: m1a, model: 'round_one:0'}]", "synthesis.num_requests=12",
               "synthesis.clustering.clusters=4", "part_rows=2",
               "judge.ensemble=[{name: long, rules: {max_chars: 16, invert: true}, weight: 50}]",
               "eval.judges=[{name: ends, rules: {ends_sentence: true}}]", "eval.instructions=0")
"""The smallest ALMA run with every kind of stage: the DPO variant on alma-tiny (one seed, one checkpoint, two
rounds, an evaluation judge beside the run's: a rule judge of whether an answer ends a sentence; no IFBench
prompts: the published run answers them), its rule member inverted (longer is better); stages write files of 2
rows and long stages commit a part per input file (synthesis: per 2 requests), so a kill leaves some parts done:
round 2's 4 prompts are 2 parts of responses."""


def alma_cli(out: Path, address: str, *overrides: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``alma-ray run`` of the alma-tiny preset into ``out``, joining the session's cluster."""
    return subprocess.run([sys.executable, "-m", "alma_ray.cli", "run", "--config", str(ALMA_TINY),
                           "--address", address, f"output_dir={out}", *overrides],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_summary(stdout: str) -> dict[str, Any]:
    """The JSON summary a run prints last."""
    import json

    return dict(json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"run_dir"'))))


@dataclass(frozen=True)
class PublishedRun:
    """alma-tiny submitted with ``ray job submit`` for 2 rounds, then extended to its 3 by the CLI."""

    run_dir: Path
    first: dict[str, Any]
    first_stdout: str
    extended: dict[str, Any]


@pytest.fixture(scope="session")
def alma_tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, ray_head: LocalHead,
                  ray_address: str) -> PublishedRun:
    """The README's cluster path, as written (`ray job submit` to a local head with token authentication), on ALMA
    as published; one run that the e2e, resume and recipe tests all read."""
    out = tmp_path_factory.mktemp("published")
    proc = subprocess.run(["ray", "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".", "--",
                           "python", "-m", "jobs.run", "--config", "jobs/configs/alma-tiny.yaml", "rounds=2",
                           f"output_dir={out}"],
                          capture_output=True, text=True, timeout=1800, cwd=REPO, env={**os.environ, **ray_head.env})
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    extended = alma_cli(out, ray_address)  # the preset's rounds=3: the run extends by round 3
    assert extended.returncode == 0, extended.stdout[-3000:] + extended.stderr[-5000:]
    return PublishedRun(out / "alma-tiny", run_summary(proc.stdout), proc.stdout, run_summary(extended.stdout))


@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, ray_address: str) -> tuple[Path, dict]:
    """The DPO variant run uninterrupted (``DPO_VARIANT``): the recipe's test reads it, the kill test compares."""
    out = tmp_path_factory.mktemp("dpo")
    proc = alma_cli(out, ray_address, *DPO_VARIANT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out / "alma-tiny-dpo", run_summary(proc.stdout)
