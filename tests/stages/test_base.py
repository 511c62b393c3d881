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


class _Doubling(_Keep):
    """A resumable stage that fails on its part 2 while ``fail`` is set (a kill mid-stage)."""

    name = "doubled"
    resumable = True
    fail = True
    seen: list[tuple[str, ...]] = []

    def transform(self, data):  # type: ignore[no-untyped-def]
        self.seen.append(tuple(data.input_files()))
        if self.fail and len(self.seen) == 3:
            raise KeyboardInterrupt("killed in part 2")
        return data.map(lambda r: {**r, "score": 2 * r["score"]})


@pytest.mark.usefixtures("ray_local")
def test_a_resumable_stage_redoes_only_the_parts_a_kill_left_undone(tmp_path: Path) -> None:
    import pyarrow as pa

    source = tmp_path / "scores"
    source.mkdir()
    for i in range(4):  # four files of 3 rows: parts of up to 6 rows are files {0, 1}, {2, 3}
        pq.write_table(pa.table({"prompt": [f"p{i}{j}" for j in range(3)], "score": [3 * i + j for j in range(3)]}),
                       source / f"part-{i}.parquet")
    out = tmp_path / "out"
    out.mkdir()
    stage = _Doubling()
    stage.bind(source, part_rows=3)  # parts: one file each
    assert [len(p.files) for p in stage.parts()] == [1, 1, 1, 1]
    stage.bind(source, part_rows=6)
    assert [len(p.files) for p in stage.parts()] == [2, 2]
    stage.bind(source, part_rows=3)
    with pytest.raises(KeyboardInterrupt):
        stage.write(None, out)
    assert sorted(p.name for p in out.glob("_PART-*")) == ["_PART-00000.json", "_PART-00001.json"]
    stage.fail, stage.seen[:] = False, []
    done = stage.write(None, out)
    assert [Path(f[0]).name for f in stage.seen] == ["part-2.parquet", "part-3.parquet"]  # parts 0, 1 kept
    assert done.rows == 12 and done.stats["score_sum"] == 2 * sum(range(12))
    assert sorted(pq.read_table(out).column("score").to_pylist()) == [2 * i for i in range(12)]
