"""The stage shape: a stage refuses an input without the columns it needs, and an empty result, by name; its
figures come from the write tasks' tallies of what they wrote."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alma_ray.errors import EmptyStageError, StageInputError
from alma_ray.stages.base import Stage


class _Keep(Stage):
    name = "kept"
    needs = ("prompt", "score")
    empty_hint = "lower the threshold"

    def transform(self, data):  # type: ignore[no-untyped-def]
        return data.filter(expr="score > 5")

    tally = staticmethod(lambda table: int(sum(table.column("score").to_pylist())))

    def figures(self, tallies: list, rows: int) -> dict:
        return {"rows_seen": rows, "score_sum": sum(tallies)}


@pytest.mark.usefixtures("ray_local")
def test_needs_are_checked_and_empty_results_refused(tmp_path: Path) -> None:
    import ray.data

    stage = _Keep()
    with pytest.raises(StageInputError, match=r"stage kept needs column\(s\) \['score'\] in its input"):
        stage.check(ray.data.from_items([{"prompt": "a"}]), tmp_path)
    data = ray.data.from_items([{"prompt": f"p{i}", "score": i} for i in range(10)], override_num_blocks=3)
    stage.check(data, tmp_path)
    out = stage.write(data, tmp_path / "kept")
    assert out.rows == 4 and out.stats == {"rows_seen": 4, "score_sum": 6 + 7 + 8 + 9}
    assert sorted(pq.read_table(tmp_path / "kept").column("score").to_pylist()) == [6, 7, 8, 9]
    with pytest.raises(EmptyStageError, match="stage kept produced no rows.*lower the threshold"):
        stage.write(data.filter(expr="score > 100"), tmp_path / "none")
