"""The stage shape: a stage refuses an input without the columns it needs, and an empty result, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from alma_ray.errors import EmptyStageError, StageInputError
from alma_ray.stages.base import Stage


class _Keep(Stage):
    name = "kept"
    needs = ("prompt", "score")
    empty_hint = "lower the threshold"

    def transform(self, data):  # type: ignore[no-untyped-def]
        return data.filter(expr="score > 5")

    def figures(self, out: Path, rows: int) -> dict:
        return {"rows_seen": rows}


@pytest.mark.usefixtures("ray_local")
def test_needs_are_checked_and_empty_results_refused(tmp_path: Path) -> None:
    import ray.data

    stage = _Keep()
    with pytest.raises(StageInputError, match=r"stage kept needs column\(s\) \['score'\] in its input"):
        stage.check(ray.data.from_items([{"prompt": "a"}]), tmp_path)
    data = ray.data.from_items([{"prompt": "a", "score": 7}, {"prompt": "b", "score": 1}])
    stage.check(data, tmp_path)
    out = stage.write(data, tmp_path / "one")
    assert out.rows == 1 and out.stats == {"rows_seen": 1}
    with pytest.raises(EmptyStageError, match="stage kept produced no rows.*lower the threshold"):
        stage.write(data.filter(expr="score > 100"), tmp_path / "none")
