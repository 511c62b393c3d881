"""The run's engines: asked twice, a model's engines are the same actors; given back on CPU, their processes are
kept and the next model's pool takes them over, sampling from the new model; closed, they are gone."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.engines.registry import Engines
from alma_ray.engines.sampler import SampleRequest


@dataclass(frozen=True)
class App:
    """A served app stand-in, for the tests with no Ray: its name is all they read."""

    name: str
    model: str = "a judge model"
    """What it loads ("": a rule scorer, which holds no engine)."""
    kind: ClassVar[str] = "judge"
    route: ClassVar[str | None] = None

    def __str__(self) -> str:
        return self.name

    def loads(self) -> list[str]:
        return [self.model] if self.model else []


@pytest.mark.usefixtures("ray_local")
def test_engines_are_shared_by_model_and_given_back(tiny_model: str, tmp_path: Path) -> None:
    import numpy as np
    import ray

    other = shutil.copytree(tiny_model, tmp_path / "other")  # another checkpoint (a round's new model)
    lines: list[str] = []
    with Engines(EngineConfig(max_model_len=256, dtype="float32"), ResourcesConfig(), log=lines.append) as engines:
        first = engines.samplers(tiny_model, 1)
        assert engines.samplers(tiny_model, 1) == first  # a later stage reuses them
        two = engines.samplers(tiny_model, 2)
        assert two[0] == first[0] and len(two) == 2  # a stage that wants more adds to the pool
        assert ray.get(first[0].__ray_ready__.remote()) is True  # the engine is up (built once)
        engines.keep_only([])
        assert engines.pools == {} and set(engines.spare) == set(two)  # shut down, processes kept
        assert ray.get([a.holds.remote() for a in two]) == ["", ""]
        (taken,) = engines.samplers(str(other), 1)
        assert taken in two and "1 taken over from a model given back" in lines[-1]
        request = SampleRequest("other", 2, {"max_tokens": 4, "temperature": 1.0}, None, "{prompt}", "salt",
                                model=str(other))
        rows = ray.get(taken.sample.remote({"prompt": np.array(["hi"]), "prompt_id": np.array(["p"])}, request))
        assert rows["checkpoint"] == ["other"] * 2 and all(t > 0 for t in rows["output_tokens"])
        assert ray.get(taken.holds.remote()) == str(other)
        spare = engines.spare[0]
    assert engines.pools == {} and engines.spare == [] and len(lines) == 3  # closed with the run
    # ray.kill is asynchronous: a call sent before the kill lands may still be answered, so wait for Ray's own
    # record of the process to read DEAD (pytest-timeout bounds the wait); then no call reaches it.
    from ray.util.state import get_actor

    while (state := get_actor(spare._actor_id.hex())) is None or state.state != "DEAD":
        time.sleep(0.2)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(spare.holds.remote(), timeout=60)


def test_before_training_on_cpu_gives_back_until_cpus_and_memory_suffice(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray here: the cluster's free CPUs and this node's free memory are stand-ins that grow as engines are
    given back; spares end first, then pools in order, then judge apps, and only while something falls short."""
    from alma_ray.config import TrainConfig
    from alma_ray.engines import host as module
    from alma_ray.engines import registry
    from alma_ray.placement import GiB

    state = {"cpus": 4.0, "memory": 2 * GiB}
    given_back: list[str] = []
    monkeypatch.setattr(module, "free_cpus", lambda need, wait_s=15.0: state["cpus"])
    monkeypatch.setattr(module, "free_memory", lambda need, wait_s=15.0: int(state["memory"]))
    monkeypatch.setattr(registry, "training_bytes", lambda model, train, workers, sequences=1, **_: 3 * GiB * sequences)
    engines = Engines(EngineConfig(), ResourcesConfig(train_workers=2))  # needs 3 CPUs (2 workers + data)

    def release(model: str, end: bool = False) -> None:
        assert end  # ended, not kept as a spare: a spare keeps its CPU and its process's memory
        given_back.append(model)
        state["memory"] += 2 * GiB

    def end_spares(keep: int = 0) -> None:
        given_back.append("spares")
        state["memory"] += GiB
        engines.spare.clear()

    monkeypatch.setattr(engines, "release", release)
    monkeypatch.setattr(engines, "end_spares", end_spares)
    monkeypatch.setattr(engines, "stop_app", lambda served: given_back.append(f"app {served}"))
    engines.pools = {"m1a": [], "m1b": [], "latest": []}
    engines.apps = {App("judge"): "app-0"}
    engines.spare = ["an idle engine process"]
    engines.before_training("model", TrainConfig())  # 3 GiB: the spares' 1 GiB is enough, nothing else goes
    assert given_back == ["spares"]
    given_back.clear()
    engines.before_training("model", TrainConfig(), sequences=2)  # 6 GiB with 3 free: two pools go, in order
    assert given_back == ["m1a", "m1b"]
    given_back.clear()
    state.update(cpus=2.0, memory=100 * GiB)  # CPUs short (the stand-in never frees them): everything goes
    engines.pools = {"m1a": []}
    engines.before_training("model", TrainConfig())
    assert given_back == ["m1a", "app judge"]


def test_new_sampling_engines_on_cpu_make_room_by_giving_back_judge_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it a new engine that does not fit is killed by Ray's memory monitor and restarted, forever."""
    from alma_ray.engines import host as module
    from alma_ray.placement import GiB

    free = {"memory": 1 * GiB}
    stopped: list[str] = []
    monkeypatch.setattr(module, "free_memory", lambda need, wait_s=15.0: int(free["memory"]))
    engines = Engines(EngineConfig(), ResourcesConfig())

    def stop(served: App) -> None:
        stopped.append(str(served))
        engines.apps.pop(served)
        free["memory"] += 2 * GiB

    monkeypatch.setattr(engines, "stop_app", stop)
    engines.apps = {App("rules", model=""): "app-r", App("judge"): "app-0", App("eval judge"): "app-1",
                    App("third"): "app-2"}
    engines.memory_for_engines(4 * GiB)  # 1 GiB free: two apps go, the third stays; the rule scorer frees nothing
    assert stopped == ["judge", "eval judge"] and list(engines.apps) == [App("rules", model=""), App("third")]
    engines.memory_for_engines(4 * GiB)  # enough now: nothing more
    assert stopped == ["judge", "eval judge"]


def test_a_judge_app_on_cpu_makes_room_from_spares_other_apps_then_sampling_pools(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ALMA's round 3 on the laptop: three Gemma sampling engines up (5.1 GiB each), then the scores stage starts
    the judge app with 1.2 GiB free; unchecked, Ray's memory monitor killed an engine and Ray restarted it, in a
    loop."""
    from alma_ray.engines import host as module
    from alma_ray.placement import GiB

    free = {"memory": 1 * GiB}
    given_back: list[str] = []
    monkeypatch.setattr(module, "free_memory", lambda need, wait_s=15.0: int(free["memory"]))
    engines = Engines(EngineConfig(), ResourcesConfig())

    def gives(what: str, memory: float):
        def release(*args, **kwargs) -> None:
            given_back.append(what + ("" if not kwargs.get("end") else " (ended)"))
            free["memory"] += memory * GiB
        return release

    monkeypatch.setattr(engines, "end_spares", gives("spares", 0.5))
    monkeypatch.setattr(engines, "stop_app", lambda panel: gives(f"app {panel}", 1)())
    monkeypatch.setattr(engines, "release", lambda model, end=False: gives(model, 2)(end=end))
    engines.spare = ["an idle engine process"]
    engines.apps = {App("judge"): "app-0", App("eval judge"): "app-1"}
    engines.pools = {"m1a": [], "m1b": [], "latest": []}
    engines.memory_for_app(App("judge"), 5 * GiB, "judge app app-0")
    # the app being started is never given back; pools are ended, not kept as spares (memory is short)
    assert given_back == ["spares", "app eval judge", "m1a (ended)", "m1b (ended)"]
    given_back.clear()
    engines.memory_for_app(App("judge"), 5 * GiB, "judge app app-0")
    assert given_back == []  # 5.5 GiB free now: nothing more
    free["memory"], engines.spare, given_back[:] = 0, [], []
    engines.apps, engines.pools = {}, {"player": [], "other": []}
    engines.memory_for_app(App("reward"), 3 * GiB, "reward app", keep=["player"])
    assert given_back == ["other (ended)"]  # never the engines the same stage samples (ALMoST's self-play)


def test_free_memory_keeps_the_monitors_reserve_and_stops_waiting_once_nothing_more_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: processes just ended return 1 GiB a second for 3 s; then the wait ends after ``SETTLE_S``
    without growth, not after the whole ``wait_s`` (a training that needs more than the node has used to wait 15 s
    after each engine it gave back)."""
    from types import SimpleNamespace

    from alma_ray.engines import host as module
    from alma_ray.placement import GiB

    clock = {"now": 0.0}
    monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: clock["now"],
                                                        sleep=lambda s: clock.update(now=clock["now"] + s)))
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.9")
    monkeypatch.setattr(module.psutil, "virtual_memory", lambda: SimpleNamespace(
        total=20 * GiB, available=int((4 + min(clock["now"], 3.0)) * GiB)))
    assert module.free_memory(1 * GiB) == 2 * GiB and clock["now"] == 0  # 4 GiB less the reserve (2): enough
    free = module.free_memory(50 * GiB)  # never enough: returns once 3 s pass without growth
    assert free == 5 * GiB and 3.0 + module.SETTLE_S <= clock["now"] <= 3.0 + module.SETTLE_S + 1.0 < 15
    clock["now"] = 0.0  # inside the reserve at first (free below zero), growing: still waited for
    monkeypatch.setattr(module.psutil, "virtual_memory", lambda: SimpleNamespace(
        total=20 * GiB, available=int((0.5 + min(clock["now"], 3.0)) * GiB)))
    assert module.free_memory(50 * GiB) == int(1.5 * GiB) and clock["now"] >= 3.0 + module.SETTLE_S


def test_an_app_given_back_and_started_again_keeps_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named from the apps up, the main judge started again after the evaluation app (``<app>-1``) took its
    memory was named ``<app>-1`` too, and ``serve.run`` replaced the evaluation app with it. No Ray here: Serve is
    a stand-in (on GPU no memory check runs)."""
    from types import SimpleNamespace

    from alma_ray.engines import registry
    from alma_ray.judge import serve
    from alma_ray.judge.serve import Panel, ServedJudge

    runs: list[tuple[str, str | None]] = []
    monkeypatch.setattr(registry, "serve", SimpleNamespace(
        start=lambda **kwargs: None, delete=lambda name: None,
        run=lambda app, name, route_prefix: runs.append((name, route_prefix))))
    monkeypatch.setattr(serve, "build_app", lambda panel, engine, resources: panel)
    engines = Engines(EngineConfig(), ResourcesConfig(use_gpu=True), prefix="run")
    main, evaluation, third = (Panel((ServedJudge(name, f"/models/{name}"),), "v1", 100, 4)
                               for name in ("base", "aligned", "third"))
    assert [engines.app(p) for p in (main, evaluation)] == ["run", "run-1"]
    engines.stop_app(main)
    assert engines.app(main) == "run" and engines.app(third) == "run-2"
    assert runs == [("run", "/judge/run"), ("run-1", None), ("run", "/judge/run"), ("run-2", None)]
    assert sorted(engines.apps.values()) == ["run", "run-1", "run-2"]


def test_engines_still_loading_count_as_taken_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine loads after ``samplers`` returns: in the laptop run's round 3, M1a's and M1b's engines each passed
    the check before either had loaded, and Ray's memory monitor then killed one in a loop. No Ray here: ``ray.wait``
    and the node's free memory are stand-ins."""
    from alma_ray.engines import host as module
    from alma_ray.engines import registry
    from alma_ray.placement import GiB

    monkeypatch.setattr(module, "free_memory", lambda need, wait_s=15.0: 10 * GiB)
    monkeypatch.setattr(registry.ray, "wait", lambda refs, num_returns, timeout: (["m1a loaded"], ["m1b loading"]))
    engines = Engines(EngineConfig(), ResourcesConfig())
    stopped: list[str] = []
    monkeypatch.setattr(engines, "stop_app", lambda served: stopped.append(str(served)))
    engines.loading = [("m1a loaded", 3 * GiB, "m1a"), ("m1b loading", 5 * GiB, "m1b"), ("m2", 1 * GiB, "m2")]
    engines.spare = ["m2"]
    killed: list[str] = []
    monkeypatch.setattr(registry.ray, "kill", killed.append)
    engines.end_spares()  # an ended engine returns its memory before its reference resolves: forgotten at once
    assert killed == ["m2"] and engines.spare == []
    assert engines._free(1 * GiB, wait_s=0) == 5 * GiB  # 10 free, 5 of them promised to m1b
    assert engines.loading == [("m1b loading", 5 * GiB, "m1b")]
    engines.apps = {App("judge"): "app-0", App("scorer"): "app-1"}
    engines.memory_for_engines(6 * GiB, keep=[App("scorer")])
    assert stopped == ["judge"]  # 10 GiB free but only 5 not promised: an app goes, not the one the stage calls
    engines.spare = ["s1", "s2", "s3"]
    engines.memory_for_engines(6 * GiB, keep=[App("judge"), App("scorer")], spares=1)
    assert killed == ["m2", "s2", "s3"] and engines.spare == ["s1"]  # the spare about to be taken over stays
    engines.close()
    assert engines.loading == []


@pytest.mark.parametrize("use_gpu", [False, True])
def test_before_training_keeps_the_engines_and_apps_it_is_told_to(monkeypatch: pytest.MonkeyPatch,
                                                                 use_gpu: bool) -> None:
    """A trainer that rolls out and scores beside its training (an RL step) keeps its policy's engines and its
    reward app up, however short the room; everything else is given back. No Ray here: stand-ins as above."""
    from alma_ray.config import TrainConfig
    from alma_ray.engines import host as module
    from alma_ray.engines import registry
    from alma_ray.placement import GiB

    monkeypatch.setattr(module, "free_cpus", lambda need, wait_s=15.0: 100.0)
    monkeypatch.setattr(module, "free_memory", lambda need, wait_s=15.0: 0)  # never enough
    monkeypatch.setattr(registry, "training_bytes", lambda *args, **kwargs: GiB)
    engines = Engines(EngineConfig(), ResourcesConfig(use_gpu=use_gpu))
    gone: list[str] = []

    def release(model: str, end: bool = False) -> None:
        gone.append(model)
        engines.pools.pop(model, None)

    def stop_app(served: App) -> None:
        gone.append(str(served))
        engines.apps.pop(served, None)

    monkeypatch.setattr(engines, "release", release)
    monkeypatch.setattr(engines, "stop_app", stop_app)
    engines.pools = {"policy": [], "m1a": []}
    engines.apps = {App("reward"): "rm", App("judge"): "judge"}
    engines.before_training("policy", TrainConfig(), keep_models=["policy"], keep_apps=[App("reward")])
    assert sorted(gone) == ["judge", "m1a"] and list(engines.pools) == ["policy"]
    assert list(engines.apps) == [App("reward")]
