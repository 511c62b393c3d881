"""Diversity of a set of prompts: what ALMA's cluster draw buys over a random draw.

- ``distinct_n``: unique word n-grams over all n-grams (higher: less repeated wording);
- ``mean_pairwise_distance``: mean cosine distance between the prompts' (unit) embeddings, over all pairs;
- ``clusters_covered``: distinct clusters among the prompts (a cluster draw covers one per prompt).

They are computed on a sample (``synthesis.clustering.metric_sample``), so they cost the same for a laptop pool
and a 100M-prompt one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (what n-gram metrics and dedup shingles are made of)."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text)
        grams.extend(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean of 1 - cos over all pairs of distinct rows (rows are unit vectors)."""
    m = len(embeddings)
    if m < 2:
        return 0.0
    x = np.asarray(embeddings, dtype=np.float64)
    sims = x @ x.T
    return float(1.0 - (sims.sum() - np.trace(sims)) / (m * (m - 1)))


def diversity(texts: Sequence[str], embeddings: np.ndarray | None = None,
              cluster_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """The metrics of one sample of prompts (embeddings and cluster ids optional)."""
    out: dict[str, Any] = {"prompts": len(texts), "distinct_1": round(distinct_n(texts, 1), 4),
                           "distinct_2": round(distinct_n(texts, 2), 4)}
    if embeddings is not None:
        out["mean_pairwise_distance"] = round(mean_pairwise_distance(embeddings), 4)
    if cluster_ids is not None:
        out["clusters_covered"] = len(set(int(c) for c in cluster_ids))
    return out
