"""The run's engines: asked twice, a model's engines are the same actors; given back on CPU, their processes are
kept and the next model's pool takes them over, sampling from the new model; closed, they are gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.stages.engines import Engines, SampleRequest


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
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(spare.holds.remote(), timeout=60)


def test_before_training_on_cpu_gives_back_until_cpus_and_memory_suffice(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray here: the cluster's free CPUs and this node's free memory are stand-ins that grow as engines are
    given back; spares end first, then pools in order, then judge apps, and only while something falls short."""
    from alma_ray.config import TrainConfig
    from alma_ray.placement import GiB
    from alma_ray.stages import engines as module

    state = {"cpus": 4.0, "memory": 2 * GiB}
    given_back: list[str] = []
    monkeypatch.setattr(module, "_free_cpus", lambda need, wait_s=15.0: state["cpus"])
    monkeypatch.setattr(module, "_free_memory", lambda need, wait_s=15.0: int(state["memory"]))
    monkeypatch.setattr(module, "training_bytes", lambda model, train, workers, sequences=1, **_: 3 * GiB * sequences)
    engines = Engines(EngineConfig(), ResourcesConfig(train_workers=2))  # needs 3 CPUs (2 workers + data)

    def release(model: str) -> None:
        given_back.append(model)
        state["memory"] += 2 * GiB

    def end_spares() -> None:
        given_back.append("spares")
        state["memory"] += GiB
        engines.spare.clear()

    monkeypatch.setattr(engines, "release", release)
    monkeypatch.setattr(engines, "end_spares", end_spares)
    monkeypatch.setattr(engines, "stop_judge", lambda panel: given_back.append(f"app {panel}"))
    engines.pools = {"m1a": [], "m1b": [], "latest": []}
    engines.apps = {"judge": "app-0"}  # type: ignore[dict-item]
    engines.spare = ["an idle engine process"]
    engines.before_training("model", TrainConfig())  # 3 GiB: the spares' 1 GiB is enough, nothing else goes
    assert given_back == ["spares"]
    given_back.clear()
    engines.before_training("model", TrainConfig(), pairs=True)  # 6 GiB with 3 free: two pools go, in order
    assert given_back == ["m1a", "m1b"]
    given_back.clear()
    state.update(cpus=2.0, memory=100 * GiB)  # CPUs short: everything goes (a pool given back keeps its CPU)
    engines.pools = {"m1a": []}
    engines.before_training("model", TrainConfig())
    assert given_back == ["m1a", "app judge"]


def test_new_sampling_engines_on_cpu_make_room_by_giving_back_judge_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it a new engine that does not fit is killed by Ray's memory monitor and restarted, forever."""
    from alma_ray.placement import GiB
    from alma_ray.stages import engines as module

    free = {"memory": 1 * GiB}
    stopped: list[str] = []
    monkeypatch.setattr(module, "_free_memory", lambda need, wait_s=15.0: int(free["memory"]))
    engines = Engines(EngineConfig(), ResourcesConfig())

    def stop(panel: str) -> None:
        stopped.append(panel)
        engines.apps.pop(panel)  # type: ignore[call-overload]
        free["memory"] += 2 * GiB

    monkeypatch.setattr(engines, "stop_judge", stop)
    engines.apps = {"judge": "app-0", "eval judge": "app-1", "third": "app-2"}  # type: ignore[dict-item]
    engines.memory_for_engines(4 * GiB)  # 1 GiB free: two apps go, the third stays
    assert stopped == ["judge", "eval judge"] and list(engines.apps) == ["third"]
    engines.memory_for_engines(4 * GiB)  # enough now: nothing more
    assert stopped == ["judge", "eval judge"]
