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
