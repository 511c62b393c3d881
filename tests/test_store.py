import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alma_ray.store import RunLockedError, RunStore, StageDamagedError, StageOutput, StoreError


def _write_rows(n: int, value: int = 0):
    def write(out: Path) -> StageOutput:
        pq.write_table(pa.table({"x": [value + i for i in range(n)]}), out / "part-0.parquet")
        return StageOutput(rows=n)
    return write


def _store(tmp_path: Path, digest: str = "h1", **kwargs) -> RunStore:
    return RunStore(tmp_path / "run", digest, "cfg", log=lambda line: None, **kwargs)


def test_commit_then_skip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.run_stage(1, "prompts", _write_rows(3))
    assert not first.skipped and first.manifest.rows == 3 and (first.path / "_MANIFEST.json").exists()
    assert list(first.manifest.files) == ["part-0.parquet"]  # size, mtime and digest of every file
    calls = []
    again = store.run_stage(1, "prompts", lambda out: calls.append(out) or StageOutput(0))
    assert again.skipped and not calls and again.manifest.rows == 3


def test_killed_stage_leaves_nothing_finished(tmp_path: Path) -> None:
    store = _store(tmp_path)

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


def test_a_recomputed_input_makes_its_dependents_stale(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = store.run_stage(1, "prompts", _write_rows(1)).manifest
    store.run_stage(1, "responses", _write_rows(1), {"round_001/prompts": a})
    # the same content again: its hash is the data's, so dependents stay valid
    same = _store(tmp_path / "b").run_stage(1, "prompts", _write_rows(1)).manifest
    assert same.content_hash == a.content_hash
    assert store.run_stage(1, "responses", _write_rows(5), {"round_001/prompts": same}).skipped
    other = store.run_stage(2, "prompts", _write_rows(2)).manifest
    rebuilt = store.run_stage(1, "responses", _write_rows(7), {"round_001/prompts": other})
    assert not rebuilt.skipped and rebuilt.manifest.rows == 7
    # a source (a seed file's digest) is an input too
    store.run_stage(1, "synthesis", _write_rows(1), sources={"seeds": "d1"})
    assert store.run_stage(1, "synthesis", _write_rows(1), sources={"seeds": "d1"}).skipped
    assert not store.run_stage(1, "synthesis", _write_rows(3), sources={"seeds": "d2"}).skipped


def test_config_must_match_and_is_claimed_only_by_a_commit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert not (tmp_path / "run" / "config.hash").exists()  # a start that fails before any commit claims nothing
    store.close()
    store = _store(tmp_path, "h0")  # so a corrected config may start here
    store.close()
    store = _store(tmp_path)
    store.run_stage(1, "prompts", _write_rows(1))
    assert (tmp_path / "run" / "config.hash").read_text().strip() == "h1"
    store.close()
    with pytest.raises(StoreError, match="different config"):
        _store(tmp_path, "h2")
    (tmp_path / "run" / "config.hash").unlink()  # without config.hash the manifests still say which config
    store = _store(tmp_path, "h2")
    with pytest.raises(StoreError, match="another config"):
        store.run_stage(1, "prompts", _write_rows(1))
    store.close()
    old = _store(tmp_path, ("h3", "h1"))  # an earlier release's digest of the same config is recognised
    assert old.run_stage(1, "prompts", _write_rows(1)).skipped


@pytest.mark.parametrize("damage", ["truncate", "delete", "edit_same_size", "manifest", "empty_manifest", "rows"])
def test_each_kind_of_damage_is_detected_and_repaired_when_told(tmp_path: Path, damage: str) -> None:
    store = _store(tmp_path)
    done = store.run_stage(1, "prompts", _write_rows(50))
    part = done.path / "part-0.parquet"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:100])
    elif damage == "delete":
        part.unlink()
    elif damage == "edit_same_size":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
        os.utime(part, ns=(time.time_ns(), time.time_ns() + 10**9))
    elif damage == "manifest":
        (done.path / "_MANIFEST.json").write_text("{not json")
    elif damage == "empty_manifest":
        (done.path / "_MANIFEST.json").write_text("{}")
    else:  # the manifest's row count, edited: the files hold 50
        manifest = json.loads((done.path / "_MANIFEST.json").read_text())
        (done.path / "_MANIFEST.json").write_text(json.dumps({**manifest, "rows": 49}))
    expected = {"manifest": "_MANIFEST.json", "empty_manifest": "_MANIFEST.json is not a readable manifest",
                "rows": "says 49 rows, its files hold 50"}.get(damage, "part-0.parquet")
    with pytest.raises(StageDamagedError, match=expected):
        store.run_stage(1, "prompts", _write_rows(50))
    store.close()
    repaired = _store(tmp_path, repair=True).run_stage(1, "prompts", _write_rows(50))
    assert not repaired.skipped and pq.read_table(repaired.path).num_rows == 50


def test_a_touched_but_unchanged_file_is_still_trusted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    done = store.run_stage(1, "prompts", _write_rows(5))
    os.utime(done.path / "part-0.parquet")  # e.g. copied without -p: hashed again, equal
    assert store.run_stage(1, "prompts", _write_rows(5)).skipped


def test_a_resumable_stage_keeps_its_parts_across_a_kill(tmp_path: Path) -> None:
    store = _store(tmp_path)
    calls: list[set[str]] = []

    def write(out: Path) -> StageOutput:
        calls.append({p.name for p in out.iterdir()})
        (out / "p00000.parquet").write_text("kept")
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed after its first part
        return StageOutput(rows=1)

    with pytest.raises(KeyboardInterrupt):
        store.run_stage(1, "responses", write, resumable=True)
    done = store.run_stage(1, "responses", write, resumable=True)
    assert "p00000.parquet" in calls[1] and done.manifest.rows == 1
    assert not (done.path / "_PARTIAL.json").exists()
    # a partial directory of other inputs is not resumed
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        store.run_stage(2, "responses", write, resumable=True)
    store.run_stage(2, "responses", write, sources={"other": "x"}, resumable=True)
    assert "p00000.parquet" not in calls[1]
    # nor is one cut in parts of another size
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        store.run_stage(3, "responses", write, resumable=True)
    store.close()
    _store(tmp_path, part_rows=7).run_stage(3, "responses", write, resumable=True)
    assert "p00000.parquet" not in calls[1]


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from alma_ray.store import RunStore
store = RunStore(Path(sys.argv[1]), "h1", "cfg")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_of_the_same_directory_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {first.pid}"):
            _store(tmp_path)
    finally:
        first.kill()
        first.wait()
    lines: list[str] = []
    store = RunStore(tmp_path / "run", "h1", "cfg", log=lines.append)  # the dead holder's lock is free
    assert any(f"pid {first.pid}" in line and "took over" in line for line in lines)
    again = RunStore(tmp_path / "run", "h1", "cfg", log=lines.append)  # re-entrant within one process
    again.close()
    store.close()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released cleanly: nothing to take over
