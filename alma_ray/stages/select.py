"""Best-of-N selection: per prompt, keep the response the judge scored highest (ALMA's D_r)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray.data
from ray.data import Dataset

from alma_ray.stages.base import Stage, shuffle_partitions


def _best(group: pd.DataFrame) -> pd.DataFrame:
    # Highest score wins; ties go to the lowest (checkpoint, sample_index), so reruns pick the same row.
    ranked = group.sort_values(["score", "checkpoint", "sample_index"], ascending=[False, True, True])
    best = ranked.head(1).copy()
    best["n_candidates"] = len(group)
    best["mean_score"] = float(group["score"].mean())
    return best


def select_best(scored: Dataset, *, expected_rows: int) -> Dataset:
    """One row per prompt: the best valid (unflagged) response, with how many it beat and their mean score."""
    valid = scored.filter(expr="judge_flag == ''")
    return valid.groupby("prompt_id", num_partitions=shuffle_partitions(expected_rows)).map_groups(
        _best, batch_format="pandas")


@dataclass
class SelectBest(Stage):
    """D_r: the best-scored response of each prompt (the input: a scores stage of ``scored_rows`` rows)."""

    scored_rows: int
    name: str = "selected"
    needs: tuple[str, ...] = ("prompt_id", "score", "judge_flag", "checkpoint", "sample_index")
    empty_hint: str = "the judge flagged every response: see the scores stage's judge_flag column"

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return select_best(data, expected_rows=self.scored_rows)

    def figures(self, out: Path, rows: int) -> dict[str, Any]:
        chosen = ray.data.read_parquet(str(out))
        return {"mean_best": chosen.mean("score"), "mean_all": chosen.mean("mean_score")}
