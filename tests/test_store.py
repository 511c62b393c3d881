from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alma_ray.store import RunStore, StageOutput, StoreError


def _write_rows(n: int):
    def write(out: Path) -> StageOutput:
        pq.write_table(pa.table({"x": list(range(n))}), out / "part-0.parquet")
        return StageOutput(rows=n)
    return write


def test_commit_then_skip(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", "h1", "cfg")
    first = store.run_stage(1, "prompts", _write_rows(3))
    assert not first.skipped and first.manifest.rows == 3 and (first.path / "_MANIFEST.json").exists()
    calls = []
    again = store.run_stage(1, "prompts", lambda out: calls.append(out) or StageOutput(0))
    assert again.skipped and not calls and again.manifest.rows == 3


def test_killed_stage_leaves_nothing_finished(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", "h1", "cfg")

    def crash(out: Path) -> StageOutput:
        (out / "part-0.parquet").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run_stage(1, "responses", crash)
    assert store.manifest(1, "responses") is None
    assert not store.path(1, "responses").exists()
    # a directory left by a hard kill (no manifest) is rebuilt, not trusted
    store.path(1, "responses").mkdir(parents=True)
    (store.path(1, "responses").parent / ".responses.tmp-dead").mkdir()
    result = store.run_stage(1, "responses", _write_rows(2))
    assert not result.skipped and result.manifest.rows == 2
    assert not list(store.path(1, "responses").parent.glob(".responses.tmp-*"))


def test_inputs_must_match_and_config_must_match(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", "h1", "cfg")
    a = store.run_stage(1, "prompts", _write_rows(1)).manifest
    store.run_stage(1, "responses", _write_rows(1), {"prompts": a})
    other = store.run_stage(2, "prompts", _write_rows(2)).manifest
    with pytest.raises(StoreError, match="other inputs"):
        store.run_stage(1, "responses", _write_rows(1), {"prompts": other})
    with pytest.raises(StoreError, match="different config"):
        RunStore(tmp_path / "run", "h2", "cfg2")
