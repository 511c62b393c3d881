"""The run's engines: asked twice, a model's engines are the same actors; given back, they are gone."""

from __future__ import annotations

import pytest

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.stages.engines import Engines


@pytest.mark.usefixtures("ray_local")
def test_engines_are_shared_by_model_and_given_back(tiny_model: str) -> None:
    import ray

    lines: list[str] = []
    with Engines(EngineConfig(max_model_len=256, dtype="float32"), ResourcesConfig(), log=lines.append) as engines:
        first = engines.samplers(tiny_model, 1)
        assert engines.samplers(tiny_model, 1) == first  # a later stage reuses them
        two = engines.samplers(tiny_model, 2)
        assert two[0] == first[0] and len(two) == 2  # a stage that wants more adds to the pool
        assert ray.get(first[0].__ray_ready__.remote()) is True  # the engine is up (built once)
        engines.keep_only([])
        assert engines.pools == {}
        engines.samplers(tiny_model, 1)
    assert engines.pools == {} and len(lines) == 3  # closed with the run
