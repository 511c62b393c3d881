"""Best-of-N selection: per prompt, keep the response the judge scored highest (ALMA's D_r)."""

from __future__ import annotations

import pandas as pd
from ray.data import Dataset


def _best(group: pd.DataFrame) -> pd.DataFrame:
    # Highest score wins; ties go to the lowest (checkpoint, sample_index), so reruns pick the same row.
    ranked = group.sort_values(["score", "checkpoint", "sample_index"], ascending=[False, True, True])
    best = ranked.head(1).copy()
    best["n_candidates"] = len(group)
    best["mean_score"] = float(group["score"].mean())
    return best


def shuffle_partitions(expected_rows: int, rows_per_partition: int = 200_000) -> int:
    """Hash-shuffle partitions for a groupby: Ray's default (200) is far too many for a laptop-sized round."""
    return max(1, min(1024, expected_rows // rows_per_partition))


def select_best(scored: Dataset, *, expected_rows: int) -> Dataset:
    """One row per prompt: the best valid (unflagged) response, with how many it beat and their mean score."""
    valid = scored.filter(expr="judge_flag == ''")
    return valid.groupby("prompt_id", num_partitions=shuffle_partitions(expected_rows)).map_groups(
        _best, batch_format="pandas")
