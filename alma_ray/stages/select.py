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


def select_best(scored: Dataset) -> Dataset:
    """One row per prompt: the best valid (unflagged) response, with how many it beat and their mean score."""
    valid = scored.filter(expr="judge_flag == ''")
    return valid.groupby("prompt_id").map_groups(_best, batch_format="pandas")
