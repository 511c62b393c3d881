"""``Run.stage``: a stage's inputs are what it declares (stages of any round, by (round, stage); models by content
identity), and it may read nothing else of the run. Ray-free: the stages here write their own rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alma_ray.recipes.base import Run
from alma_ray.stages.base import Stage
from alma_ray.store import RunStore, StageOutput, StageResult, UndeclaredInputError, input_path


@dataclass
class Rows(Stage):
    """Writes ``values`` as rows; reads (sums) the stages in ``uses``, loads ``models``, and, to test the guard,
    also reads ``sneak`` without declaring it."""

    name: str
    values: list[int]
    uses: list[StageResult] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    sneak: Path | None = None
    built: list[int] = field(default_factory=list)

    def reads(self) -> list[StageResult]:
        return list(self.uses)

    def loads(self) -> list[str]:
        return list(self.models)

    def write(self, data: Any, out: Path) -> StageOutput:
        total = sum(pq.read_table(input_path(u.path)).column("x").to_pylist()[0] for u in self.uses)
        if self.sneak is not None:
            pq.read_table(input_path(self.sneak))
        self.built.append(total)
        pq.write_table(pa.table({"x": [v + total for v in self.values]}), out / "part-0.parquet")
        return self.counted(len(self.values))


def _run(tmp_path: Path, **kwargs: Any) -> Run:
    return Run(RunStore(tmp_path / "run", "h", "cfg", log=lambda line: None, **kwargs), log=lambda line: None)


def test_inputs_of_the_same_name_from_two_rounds_are_both_inputs(tmp_path: Path) -> None:
    run = _run(tmp_path)
    d1, d2 = run.stage(1, Rows("selected", [1])), run.stage(2, Rows("selected", [2]))
    sft = run.stage(2, Rows("sft", [0], uses=[d1, d2]))
    assert set(sft.manifest.input_hashes) == {"round_001/selected", "round_002/selected"}
    # round 1's data rebuilt with other content: round 2's training (which read D_1 and D_2) is stale
    (d1.path / "_MANIFEST.json").unlink()
    d1 = run.stage(1, Rows("selected", [5]))
    again = Rows("sft", [0], uses=[d1, d2])
    assert not run.stage(2, again).skipped and again.built == [7]
    assert run.stage(2, Rows("sft", [0], uses=[d1, d2])).skipped


def test_a_model_is_an_input_by_content(tmp_path: Path) -> None:
    run = _run(tmp_path)
    model = run.stage(2, Rows("sft", [1]))  # a model this run trained (any committed stage folder)
    outside = tmp_path / "base"
    outside.mkdir()
    (outside / "config.json").write_text('{"layers": 2}')
    responses = run.stage(3, Rows("responses", [0], models=[str(model.path), str(outside)]))
    assert set(responses.manifest.input_hashes) == {"model:round_002/sft", "model:base"}
    assert run.stage(3, Rows("responses", [0], models=[str(model.path), str(outside)])).skipped
    # the same folder with other content: a retrained checkpoint, an edited base model
    (model.path / "_MANIFEST.json").unlink()
    model = run.stage(2, Rows("sft", [9]))
    assert not run.stage(3, Rows("responses", [0], models=[str(model.path), str(outside)])).skipped
    (outside / "config.json").write_text('{"layers": 3}')
    assert not run.stage(3, Rows("responses", [0], models=[str(model.path), str(outside)])).skipped
    assert run.stage(3, Rows("responses", [0], models=[str(model.path), str(outside)])).skipped


def test_reading_an_undeclared_stage_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path)
    ledger = run.stage(1, Rows("prompts", [1]))
    declared = run.stage(1, Rows("pool", [1]))
    with pytest.raises(UndeclaredInputError, match="round_001/prompts.*not among its declared inputs.*round_001/pool"):
        run.stage(2, Rows("prompts", [3], uses=[declared], sneak=ledger.path))
    assert run.stage(2, Rows("prompts", [3], uses=[declared, ledger], sneak=ledger.path)).manifest.rows == 1
    assert input_path(ledger.path) == str(ledger.path)  # outside a stage (a recipe, a report): no check


def test_two_models_of_one_name_are_two_inputs(tmp_path: Path) -> None:
    run = _run(tmp_path)
    folders = []
    for parent in ("a", "b"):
        folder = tmp_path / parent / "final"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(f'{{"from": "{parent}"}}')
        folders.append(str(folder))
    done = run.stage(1, Rows("responses", [0], models=folders))
    assert set(done.manifest.input_hashes) == {"model:final", "model:final#1"}
    (Path(folders[1]) / "config.json").write_text('{"from": "b, retrained"}')
    assert not run.stage(1, Rows("responses", [0], models=folders)).skipped


def test_a_manifest_from_before_declared_inputs_is_held_to_what_it_recorded(tmp_path: Path) -> None:
    """A finished run of an earlier release keyed its stage inputs by bare stage name and recorded no models: it
    is not rebuilt while those inputs are as recorded, and is once one of them changes."""
    import json

    run = _run(tmp_path)
    selected = run.stage(1, Rows("selected", [1]))
    sft = run.stage(2, Rows("sft", [0], uses=[selected], models=[str(selected.path)]))
    manifest = sft.path / "_MANIFEST.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "input_hashes": {"selected": selected.manifest.content_hash}}))
    assert run.stage(2, Rows("sft", [0], uses=[selected], models=[str(selected.path)])).skipped
    (selected.path / "_MANIFEST.json").unlink()
    selected = run.stage(1, Rows("selected", [2]))  # rebuilt with other content
    assert not run.stage(2, Rows("sft", [0], uses=[selected], models=[str(selected.path)])).skipped
