"""The shape of a stage (modelled on ray.data.llm's stages): a name, the input columns it needs, the dataset
transform, and the figures it records.

A recipe hands a stage to ``Run.stage`` (``alma_ray.recipes.base``) with the committed stage it reads; the run
checks ``needs`` against that input's columns before anything starts (naming the missing column), calls
``write``, and commits the output with its manifest through the store. ``write``'s default streams
``transform(data)`` into parquet, counts the rows from the file footers, refuses an empty result
(``EmptyStageError``, with ``empty_hint``) and records ``figures``. Stages whose output is not rows (a trained model,
centroids beside their rows) override ``write``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from ray.data import Dataset

from alma_ray.errors import EmptyStageError, StageInputError
from alma_ray.store import StageOutput, parquet_rows


class Stage:
    """One step of a recipe. Subclasses set ``name`` and ``needs`` and implement ``transform`` (or ``write``)."""

    name: str
    needs: tuple[str, ...] = ()
    """Columns the stage reads from its input; checked before it runs."""
    empty_hint: str = "check the stage's inputs and settings"
    """What to change when the stage produces no rows."""

    def transform(self, data: Dataset | None) -> Dataset:
        """The rows to write, as a lazy dataset over ``data`` (the input stage's rows, or None)."""
        raise NotImplementedError(f"stage {self.name} has neither transform nor write")

    def figures(self, out: Path, rows: int) -> dict[str, Any]:
        """The figures recorded in the manifest, from what was written to ``out`` (``rows`` rows)."""
        return {}

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        """Write the stage's output into ``out``; the default writes ``transform(data)`` as parquet."""
        self.transform(data).write_parquet(str(out))
        return self.counted(out)

    def counted(self, out: Path, *, rows_dir: Path | None = None, **figures: Any) -> StageOutput:
        """The written rows (counted from the footers of ``rows_dir``, default ``out``), refused when there are
        none, with the stage's ``figures(out, rows)`` and the ``figures`` computed while writing."""
        rows = parquet_rows(rows_dir or out)
        if rows == 0:
            raise EmptyStageError(f"stage {self.name} produced no rows; nothing was committed: {self.empty_hint}")
        return StageOutput(rows=rows, stats={**self.figures(out, rows), **figures})

    def check(self, data: Dataset, source: Path) -> None:
        """Refuse an input that lacks a column this stage needs, naming it and where the input came from."""
        have = data.schema().names
        missing = [c for c in self.needs if c not in have]
        if missing:
            raise StageInputError(f"stage {self.name} needs column(s) {missing} in its input {source}, which has "
                                  f"{have}")


def shuffle_partitions(expected_rows: int, rows_per_partition: int = 200_000) -> int:
    """Hash-shuffle partitions for a groupby or join: Ray's default (200) is far too many for a laptop round."""
    return max(1, min(1024, expected_rows // rows_per_partition))


def sample_rows(ds: Dataset, n: int, *, columns: list[str]) -> pd.DataFrame:
    """Up to ``n`` rows of ``ds`` (only ``columns``) on the driver, for metrics."""
    batch = ds.select_columns(columns).take_batch(n, batch_format="pandas")
    return batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)
