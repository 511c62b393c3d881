"""The shape of a stage (modelled on ray.data.llm's stages): a name, the input columns it needs, the dataset
transform, and the figures it records.

A recipe hands a stage to ``Run.stage`` (``alma_ray.recipes.base``) with the committed stage it reads; the run
checks ``needs`` against that input's columns before anything starts (naming the missing column), calls
``write``, and commits the output with its manifest through the store. ``write``'s default streams
``transform(data)`` into parquet and computes the stage's figures in that same pass: each write task tallies the
blocks it writes (``tally``, in the task) and the driver merges the tallies (``figures``), so no stage re-reads its
output. It refuses an empty result (``EmptyStageError``, with ``empty_hint``). Stages whose output is not rows (a
trained model, centroids beside their rows) override ``write``.

A ``resumable`` stage (the long ones: generation, scoring, synthesis) writes its output in parts, each committed
as it finishes (``write_parts``): a part covers a fixed group of the input's files (at most ``part_rows`` rows)
or, for a stage that makes its own rows, a fixed range of them. A rerun after a kill skips the committed parts and
does only the rest; every row's seed comes from its lineage, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data import Dataset
from ray.data._internal.datasource.parquet_datasink import ParquetDatasink

from alma_ray.errors import EmptyStageError, StageInputError
from alma_ray.progress import StageProgress, busy_window
from alma_ray.store import StageOutput, StageResult, atomic_write_text, input_path, parquet_files

Tally = Callable[[pa.Table], Any]
"""What one write task computes from the rows it writes (runs in the task; merged on the driver by ``figures``)."""


class Stage:
    """One step of a recipe. Subclasses set ``name`` and ``needs`` and implement ``transform`` (or ``write``)."""

    name: str
    needs: tuple[str, ...] = ()
    """Columns the stage reads from its input; checked before it runs."""
    empty_hint: str = "check the stage's inputs and settings"
    """What to change when the stage produces no rows."""

    tally: Tally | None = None
    """Set to a module-level function: each write task's figures of the rows it wrote."""
    resumable: ClassVar[bool] = False
    """Write in parts committed one by one (``write_parts``), so a killed stage resumes where it stopped."""
    input_dir: Path | None = None
    """The input stage's rows (set by ``bind``)."""
    part_rows: int | None = None
    """Rows per committed file, and per part of a resumable stage (set by ``bind``)."""

    input_rows: int | None = None
    """Rows of the input stage (set by ``bind``: progress totals, shuffle partitions)."""
    shows_progress: ClassVar[bool] = False
    """Draw a progress bar with ETA while writing (the long stages: their engines report to ``progress``)."""
    progress: Any = None
    """The ``ProgressCounter`` the stage's engines report to while it writes (``progress_bar`` sets it)."""
    started: float = 0.0
    """When the stage began writing."""
    busy_s: float | None = None
    """Seconds from the first engine's first batch to the last's (``progress.busy_window``), once written."""

    def bind(self, input_dir: Path | None, part_rows: int | None, input_rows: int | None = None) -> None:
        """Where the input's rows are, how many there are and how many rows a file (and a part) holds: the run
        sets this."""
        self.input_dir, self.part_rows, self.input_rows = input_dir, part_rows, input_rows

    def reads(self) -> list[StageResult]:
        """The committed stages the stage reads besides the one it streams (``Run.stage``'s ``read``), of any
        round: each is an input, so a change to it makes the committed stage stale."""
        return []

    def loads(self) -> list[str]:
        """The model folders (or hub ids) the stage loads: each is an input by content identity
        (``store.model_identity``)."""
        return []

    def sources(self) -> dict[str, str]:
        """Digests of what the stage reads besides its input stages (seed prompts, an annotation file): a change
        makes the committed stage stale."""
        return {}

    def parts(self) -> list[Part]:
        """The resumable units: groups of the input's files, or one part for a stage that makes its own rows."""
        if self.input_dir is None or self.part_rows is None:
            return [Part(0)]
        return input_parts(self.input_dir, self.part_rows)

    def part_data(self, part: Part) -> Dataset | None:
        """The rows of one part (None: the stage makes its own)."""
        return ray.data.read_parquet([input_path(f) for f in part.files]) if part.files else None

    def write_output(self, data: Dataset | None, out: Path) -> tuple[int, list[Any]]:
        """Write ``transform`` of the input into ``out`` (in parts when ``resumable``): (rows, tallies)."""
        if self.resumable and self.part_rows is not None:
            return write_parts(self, out)
        return write_rows(self.transform(data), out, self.tally, max_rows_per_file=self.part_rows)

    def transform(self, data: Dataset | None) -> Dataset:
        """The rows to write, as a lazy dataset over ``data`` (the input stage's rows, or None)."""
        raise NotImplementedError(f"stage {self.name} has neither transform nor write")

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        """The figures recorded in the manifest, from the write tasks' ``tally`` results (``rows`` rows)."""
        return {}

    def progress_total(self) -> int | None:
        """What the progress bar counts to (rows, requests); None: no total, no ETA."""
        return self.input_rows

    @contextlib.contextmanager
    def progress_bar(self) -> Iterator[dict[str, Any]]:
        """A progress bar with ETA for the block (its counter in ``progress``, for the engines to report to); yields
        the figures the counter ends with, filled in as the block ends; ``busy_s`` is set from them."""
        final: dict[str, Any] = {}
        with StageProgress(self.name, self.progress_total()) as bar:
            self.progress = bar.counter
            yield final
        final.update(bar.final)
        self.busy_s = busy_window(bar.final)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        """Write the stage's output into ``out``; the default writes ``transform(data)`` as parquet, under a
        progress bar when the stage ``shows_progress`` (its busy window and steady tokens/s then recorded)."""
        self.started = time.time()
        if not self.shows_progress:
            rows, tallies = self.write_output(data, out)
            return self.counted(rows, tallies)
        with self.progress_bar() as final:
            rows, tallies = self.write_output(data, out)
        steady = {"steady_tok_s": final["steady_tok_s"]} if final.get("tokens") else {}
        return self.counted(rows, tallies, busy_s=self.busy_s, **steady)

    def counted(self, rows: int, tallies: Iterable[Any] = (), **figures: Any) -> StageOutput:
        """``rows`` written, refused when there are none, with the stage's ``figures`` and those computed while
        writing."""
        if rows == 0:
            raise EmptyStageError(f"stage {self.name} produced no rows; nothing was committed: {self.empty_hint}")
        return StageOutput(rows=rows, stats={**self.figures(list(tallies), rows), **figures})

    def check(self, data: Dataset, source: Path) -> None:
        """Refuse an input that lacks a column this stage needs, naming it and where the input came from."""
        have = data.schema().names
        missing = [c for c in self.needs if c not in have]
        if missing:
            raise StageInputError(f"stage {self.name} needs column(s) {missing} in its input {source}, which has "
                                  f"{have}")


class _TallyingParquet(ParquetDatasink):
    """Ray Data's parquet sink, whose write tasks also return ``tally`` of the rows they wrote."""

    def __init__(self, path: str, tally: Tally | None, max_rows_per_file: int | None = None) -> None:
        super().__init__(path, dataset_uuid=uuid.uuid4().hex[:12], max_rows_per_file=max_rows_per_file)
        self.tally = tally
        self.result: Any = None

    def write(self, blocks: Iterable[Any], ctx: Any) -> Any:
        from ray.data.block import BlockAccessor

        blocks = list(blocks)
        super().write(blocks, ctx)
        if self.tally is None:
            return None
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        return self.tally(pa.concat_tables(tables, promote_options="default")) if tables else None

    def on_write_complete(self, write_result: Any) -> None:
        super().on_write_complete(write_result)
        self.result = write_result


def write_rows(ds: Dataset, out: Path, tally: Tally | None = None, *, max_rows_per_file: int | None = None
               ) -> tuple[int, list[Any]]:
    """Stream ``ds`` into parquet files in ``out`` (about ``max_rows_per_file`` rows at most each): (rows written,
    each write task's ``tally`` of its rows)."""
    sink = _TallyingParquet(str(out), tally, max_rows_per_file)
    ds.write_datasink(sink)
    result = sink.result
    if result is None:
        return 0, []
    return int(result.num_rows), [t for t in result.write_returns if t is not None]


def write_pylist(rows: list[dict[str, Any]], out: Path) -> None:
    """A small list of rows (collected by design: annotations, accuracy tables) as one parquet file."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "part-0.parquet")


def write_table(table: pa.Table, out: str | Path, *, max_rows_per_file: int | None = None) -> None:
    """A small path's rows (one task's table) as parquet files of at most ``max_rows_per_file`` rows, as
    ``write_rows`` cuts them (one file when the table is empty, so the schema is kept)."""
    step = max_rows_per_file or max(table.num_rows, 1)
    for i, start in enumerate(range(0, max(table.num_rows, 1), step)):
        pq.write_table(table.slice(start, step), f"{out}/part-{i:05d}.parquet")


SMALL_ROWS = 200_000
"""Inputs up to this many rows take the small path: one task sees them all (pandas), no hash shuffle."""


def shuffle_partitions(expected_rows: int, rows_per_partition: int = 200_000) -> int:
    """Hash-shuffle partitions for a groupby or join: Ray's default (200) is far too many for a laptop round."""
    return max(1, min(1024, expected_rows // rows_per_partition))


def sample_rows(ds: Dataset, n: int, *, columns: list[str]) -> pd.DataFrame:
    """Up to ``n`` rows of ``ds`` (only ``columns``) on the driver, for metrics."""
    batch = ds.select_columns(columns).take_batch(n, batch_format="pandas")
    return batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)


@dataclass(frozen=True)
class Part:
    """One resumable unit of a stage: the input files it covers, or the range [start, stop) of rows it makes."""

    index: int
    files: tuple[str, ...] = ()
    start: int = 0
    stop: int = 0


def input_parts(source: Path, rows_per_part: int) -> list[Part]:
    """The files of a committed stage (sorted by name: the same on every rerun) in groups of at most
    ``rows_per_part`` rows (a file with more is a part of its own), counted from the parquet footers."""
    files = [str(p) for p in parquet_files(source)]
    groups: list[list[str]] = []
    rows = 0
    for f in files:
        n = pq.read_metadata(f).num_rows
        if not groups or rows + n > rows_per_part:
            groups.append([])
            rows = 0
        groups[-1].append(f)
        rows += n
    return [Part(i, tuple(g)) for i, g in enumerate(groups)] or [Part(0)]


def range_parts(total: int, rows_per_part: int | None) -> list[Part]:
    """[0, total) in ranges of ``rows_per_part`` (one range when None)."""
    step = rows_per_part or max(total, 1)
    return [Part(i, start=a, stop=min(a + step, total)) for i, a in enumerate(range(0, total, step))]


def write_parts(stage: Stage, out: Path) -> tuple[int, list[Any]]:
    """Write ``stage`` part by part into ``out``: part ``i``'s files are ``p<i>-*.parquet``, committed by its
    marker ``_PART-<i>.json`` (rows and tallies), written last. A part with a marker is kept as it is; one
    without is redone from scratch (its files from a killed attempt removed first)."""
    for tmp in out.glob(".part-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    total, tallies = 0, []
    for part in stage.parts():
        tag = f"{part.index:05d}"
        marker = out / f"_PART-{tag}.json"
        if not marker.exists():
            for stale in out.glob(f"p{tag}-*"):
                stale.unlink()
            tmp = out / f".part-{tag}.tmp-{uuid.uuid4().hex[:8]}"
            rows, part_tallies = write_rows(stage.transform(stage.part_data(part)), tmp, stage.tally,
                                            max_rows_per_file=stage.part_rows)
            for f in sorted(tmp.glob("*.parquet")):
                f.rename(out / f"p{tag}-{f.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            atomic_write_text(marker, json.dumps({"rows": rows, "tallies": part_tallies}, default=float))
        done = json.loads(marker.read_text())
        total += done["rows"]
        tallies += done["tallies"]
    return total, tallies
