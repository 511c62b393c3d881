"""The shape of a stage (modelled on ray.data.llm's stages): a name, the input columns it needs, the dataset
transform, and the figures it records.

A recipe hands a stage to ``Run.stage`` (``alma_ray.recipes.base``) with the committed stage it reads; the run
checks ``needs`` against that input's columns before anything starts (naming the missing column), calls
``write``, and commits the output with its manifest through the store. ``write``'s default streams
``transform(data)`` into parquet and computes the stage's figures in that same pass: each write task tallies the
blocks it writes (``tally``, in the task) and the driver merges the tallies (``figures``), so no stage re-reads its
output. It refuses an empty result (``EmptyStageError``, with ``empty_hint``). Stages whose output is not rows (a
trained model, centroids beside their rows) override ``write``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from ray.data import Dataset
from ray.data._internal.datasource.parquet_datasink import ParquetDatasink

from alma_ray.errors import EmptyStageError, StageInputError
from alma_ray.store import StageOutput

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

    def transform(self, data: Dataset | None) -> Dataset:
        """The rows to write, as a lazy dataset over ``data`` (the input stage's rows, or None)."""
        raise NotImplementedError(f"stage {self.name} has neither transform nor write")

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        """The figures recorded in the manifest, from the write tasks' ``tally`` results (``rows`` rows)."""
        return {}

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        """Write the stage's output into ``out``; the default writes ``transform(data)`` as parquet."""
        rows, tallies = write_rows(self.transform(data), out, self.tally)
        return self.counted(rows, tallies)

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

    def __init__(self, path: str, tally: Tally | None) -> None:
        super().__init__(path, dataset_uuid=uuid.uuid4().hex[:12])
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


def write_rows(ds: Dataset, out: Path, tally: Tally | None = None) -> tuple[int, list[Any]]:
    """Stream ``ds`` into parquet files in ``out``: (rows written, each write task's ``tally`` of its rows)."""
    sink = _TallyingParquet(str(out), tally)
    ds.write_datasink(sink)
    result = sink.result
    if result is None:
        return 0, []
    return int(result.num_rows), [t for t in result.write_returns if t is not None]


SMALL_ROWS = 200_000
"""Inputs up to this many rows take the small path: one task sees them all (pandas), no hash shuffle."""


def shuffle_partitions(expected_rows: int, rows_per_partition: int = 200_000) -> int:
    """Hash-shuffle partitions for a groupby or join: Ray's default (200) is far too many for a laptop round."""
    return max(1, min(1024, expected_rows // rows_per_partition))


def sample_rows(ds: Dataset, n: int, *, columns: list[str]) -> pd.DataFrame:
    """Up to ``n`` rows of ``ds`` (only ``columns``) on the driver, for metrics."""
    batch = ds.select_columns(columns).take_batch(n, batch_format="pandas")
    return batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)
