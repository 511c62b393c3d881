"""Best-of-N selection: per prompt, keep the response the judge scored highest (ALMA's D_r)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.compute as pc
from ray.data import Dataset

from alma_ray.stages.base import SMALL_ROWS, Stage, shuffle_partitions


def _best(group: pd.DataFrame) -> pd.DataFrame:
    # Highest score wins; ties go to the lowest (checkpoint, sample_index), so reruns pick the same row.
    ranked = group.sort_values(["score", "checkpoint", "sample_index"], ascending=[False, True, True])
    best = ranked.head(1).copy()
    best["n_candidates"] = len(group)
    best["mean_score"] = float(group["score"].mean())
    return best


def _best_of_each(rows: pd.DataFrame) -> pd.DataFrame:
    """Every prompt's best row, in prompt_id order (the order the shuffle path writes them: training reads it)."""
    return pd.concat([_best(group) for _, group in rows.groupby("prompt_id", sort=True)]) if len(rows) else rows


def select_best(scored: Dataset, *, expected_rows: int) -> Dataset:
    """One row per prompt: the best valid (unflagged) response, with how many it beat and their mean score.

    Up to ``SMALL_ROWS`` rows one task groups them all; beyond, a hash shuffle by prompt."""
    valid = scored.filter(expr="judge_flag == ''")
    if expected_rows <= SMALL_ROWS:
        return valid.map_batches(_best_of_each, batch_format="pandas", batch_size=max(1, expected_rows))
    return valid.groupby("prompt_id", num_partitions=shuffle_partitions(expected_rows)).map_groups(
        _best, batch_format="pandas")


def best_tally(table: Any) -> tuple[float, float]:
    """(sum of the chosen scores, sum of their prompts' mean scores) of a write task."""
    return float(pc.sum(table.column("score")).as_py()), float(pc.sum(table.column("mean_score")).as_py())


@dataclass
class SelectBest(Stage):
    """D_r: the best-scored response of each prompt (the input: a scores stage of ``scored_rows`` rows)."""

    scored_rows: int
    name: str = "selected"
    needs: tuple[str, ...] = ("prompt_id", "score", "judge_flag", "checkpoint", "sample_index")
    empty_hint: str = "the judge flagged every response: see the scores stage's judge_flag column"
    tally = staticmethod(best_tally)

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return select_best(data, expected_rows=self.scored_rows)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        return {"mean_best": sum(t[0] for t in tallies) / rows, "mean_all": sum(t[1] for t in tallies) / rows}
