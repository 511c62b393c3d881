"""Deduplication of candidate prompts, exact and near, against the seed prompts and everything kept before.

Every step is a Ray Data operation (map, hash-shuffle aggregate, hash join), so it streams and scales out:

- **exact**: the normalized-text hash (``prompt_id``); of equal ids the earliest row (lowest ``order``) is kept.
- **near**: a MinHash signature per prompt over word n-gram shingles (datasketch), cut into the LSH bands that
  datasketch's ``MinHashLSH`` picks for the threshold; each (band, band hash) is a bucket. A prompt that shares a
  bucket with an earlier row is a near-duplicate. Work grows with rows x bands, never rows squared.

Reference rows (seed prompts, the existing pool) carry negative ``order``, so they always win and are never
returned. As in large-scale text dedup (NeMo Curator, text-dedup), bucket collisions are not re-verified against
the threshold: datasketch's band choice keeps false positives and negatives low.

``Dedup`` is the pool stage: the synthesis candidates that passed every filter, without exact or near duplicates.
Up to ``SMALL_ROWS`` candidates (every laptop pool) take the small path: one task reads them whole and runs the
same steps in pandas (``dedup_frame``: the same bands, the same lowest-order winner), with no hash shuffle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray.data
from ray.data import Dataset
from ray.data.aggregate import Min

from alma_ray.config import DedupConfig
from alma_ray.diversity import words
from alma_ray.ids import prompt_id
from alma_ray.stages.base import SMALL_ROWS, Stage, write_rows, write_table
from alma_ray.store import StageOutput, input_path


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the lower-cased text (a prompt shorter than ``n`` words is one shingle)."""
    tokens = words(text)
    if len(tokens) <= n:
        return [" ".join(tokens).encode()]
    return list(dict.fromkeys(" ".join(tokens[i:i + n]).encode() for i in range(len(tokens) - n + 1)))


def reference_frame(texts: list[str]) -> pd.DataFrame:
    """Prompts to deduplicate against (seeds, an existing pool): negative ``order``, so they always win."""
    return pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts,
                         "order": -np.arange(1, len(texts) + 1, dtype=np.int64)})


def reference_rows(texts: list[str]) -> Dataset:
    return ray.data.from_pandas(reference_frame(texts))


@lru_cache(maxsize=8)
def lsh_bands(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """The (start, end) hash ranges of each band, as datasketch's MinHashLSH chooses them for ``threshold``."""
    from datasketch import MinHashLSH

    return tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)


def band_keys(batch: pd.DataFrame, *, cfg: DedupConfig) -> pd.DataFrame:
    """One row per (prompt, band): ``bucket`` (a 63-bit hash of the band index and its signature slice), ``order``."""
    from datasketch import MinHash

    bands = lsh_bands(cfg.threshold, cfg.num_perm)
    signatures = MinHash.bulk([shingles(t, cfg.ngram) for t in batch["text"]], num_perm=cfg.num_perm)
    buckets = np.empty((len(signatures), len(bands)), dtype=np.int64)
    for i, sig in enumerate(signatures):
        values = sig.hashvalues
        for j, (start, end) in enumerate(bands):
            digest = hashlib.blake2b(values[start:end].tobytes(), digest_size=8, salt=j.to_bytes(2, "little"))
            buckets[i, j] = int.from_bytes(digest.digest(), "little") >> 1
    return pd.DataFrame({"bucket": buckets.ravel(),
                         "order": np.repeat(batch["order"].to_numpy(dtype=np.int64), len(bands))})


@dataclass
class DedupResult:
    unique: Dataset
    """Candidate rows that are neither exact nor near duplicates (columns as given)."""
    near: Dataset
    """``order`` of each near-duplicate candidate, and ``of_reference``: whether it repeats a reference row."""


def exact_dedup(rows: Dataset, *, partitions: int) -> Dataset:
    """One row per ``prompt_id``: the one with the lowest ``order``."""
    first = rows.groupby("prompt_id", num_partitions=partitions).aggregate(Min("order", alias_name="first"))
    return rows.join(first, "inner", partitions, on=("prompt_id", "order"),  # type: ignore[arg-type]
                     right_on=("prompt_id", "first"))  # type: ignore[arg-type]


def dedup(candidates: Dataset, reference: Dataset | None, *, cfg: DedupConfig, partitions: int) -> DedupResult:
    """Drop exact and near duplicates of ``candidates`` among themselves and against ``reference``.

    Both datasets need ``prompt_id``, ``text`` and ``order`` (unique; the lowest wins; reference rows negative).
    Each step is materialized before the next: one plan chaining all the shuffles stalls Ray Data's scheduler
    on small clusters (minutes for a handful of rows), and the steps' outputs are reused anyway.
    """
    unique_exact = exact_dedup(candidates, partitions=partitions)
    if reference is not None:
        unique_exact = unique_exact.join(reference.select_columns(["prompt_id"]), "left_anti", partitions,
                                         on=("prompt_id",))
    unique_exact = unique_exact.materialize()
    docs = unique_exact.select_columns(["text", "order"])
    if reference is not None:
        docs = docs.union(reference.select_columns(["text", "order"]))
    keys = docs.map_batches(band_keys, fn_kwargs=dict(cfg=cfg), batch_format="pandas")  # type: ignore[arg-type]
    keys = keys.materialize()
    first = keys.groupby("bucket", num_partitions=partitions).aggregate(Min("order", alias_name="first"))
    dups = (keys.join(first.materialize(), "inner", partitions, on=("bucket",))
            .filter(expr="order > first")
            .filter(expr="order >= 0")).materialize()  # a reference row that repeats another is not ours to drop
    near = (dups.groupby("order", num_partitions=partitions).aggregate(Min("first", alias_name="first"))
            .map_batches(lambda b: pd.DataFrame({"order": b["order"], "of_reference": b["first"] < 0}),
                         batch_format="pandas")).materialize()
    unique = unique_exact.join(near.select_columns(["order"]), "left_anti", partitions, on=("order",))
    return DedupResult(unique=unique, near=near)


def dedup_frame(candidates: pd.DataFrame, reference: pd.DataFrame, *, cfg: DedupConfig
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dedup`` on frames (the small path): (unique candidates, near duplicates' ``order`` and ``of_reference``)."""
    first = candidates.groupby("prompt_id")["order"].transform("min")
    unique_exact = candidates[(candidates["order"] == first) & ~candidates["prompt_id"].isin(reference["prompt_id"])]
    docs = pd.concat([unique_exact[["text", "order"]], reference[["text", "order"]]], ignore_index=True)
    keys = band_keys(docs, cfg=cfg) if len(docs) else pd.DataFrame({"bucket": [], "order": []}, dtype=np.int64)
    keys["first"] = keys.groupby("bucket")["order"].transform("min")
    dups = keys[(keys["order"] > keys["first"]) & (keys["order"] >= 0)]
    near = dups.groupby("order", as_index=False)["first"].min()
    near = pd.DataFrame({"order": near["order"], "of_reference": near["first"] < 0})
    return unique_exact[~unique_exact["order"].isin(near["order"])], near


def candidates_frame(batch: pd.DataFrame) -> pd.DataFrame:
    """Synthesis rows that passed every filter, as dedup candidates (``prompt``, ``order``)."""
    passed = batch[batch["reject"] == ""]
    return passed.assign(prompt=passed["text"], order=passed["request_index"]).drop(columns=["reject"])


def dedup_small(synthesis_dir: str, reference: list[str], out: str, *, cfg: DedupConfig,
                max_rows_per_file: int | None = None) -> dict[str, int]:
    """The whole pool stage for a small pool in one task: candidates read whole, deduplicated in pandas, the
    unique rows written to ``out``; returns the counts the stage records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    candidates = candidates_frame(pq.read_table(synthesis_dir).to_pandas())
    unique, near = dedup_frame(candidates, reference_frame(reference), cfg=cfg)
    unique = unique.sort_values("order").drop(columns=["text", "order"])
    write_table(pa.Table.from_pandas(unique, preserve_index=False), out, max_rows_per_file=max_rows_per_file)
    return {"rows": len(unique), "near": len(near), "near_of_reference": int(near["of_reference"].sum())}


@dataclass
class Dedup(Stage):
    """The prompt pool: synthesis candidates that passed the filters, without exact or near duplicates of each
    other or of ``reference`` (the seed prompts, held-out ones included)."""

    cfg: DedupConfig
    reference: list[str]
    partitions: int
    filters: dict[str, int]
    """The synthesis stage's filter counts (its manifest), for the dedup figures."""
    name: str = "pool"
    needs: tuple[str, ...] = ("text", "prompt_id", "request_index", "reject")
    _near: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.empty_hint = ("no synthesized prompt survived the filters and dedup: raise synthesis.num_requests or "
                           f"relax synthesis.min_chars/max_chars (filters: {self.filters})")

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        assert data is not None and self.input_dir is not None
        if self.filters["passed"] <= SMALL_ROWS:  # one task, no shuffle
            task = ray.remote(dedup_small).options(num_cpus=1)  # type: ignore[arg-type]
            done = ray.get(task.remote(input_path(self.input_dir), self.reference, str(out), cfg=self.cfg,  # type: ignore
                                       max_rows_per_file=self.part_rows))
            self._near = (done["near"], done["near_of_reference"])
            return self.counted(done["rows"])
        candidates = data.filter(expr="reject == ''").map_batches(candidates_frame, batch_format="pandas")
        result = dedup(candidates, reference_rows(self.reference), cfg=self.cfg, partitions=self.partitions)
        near = result.near.materialize()
        n_near = near.count()
        self._near = (n_near, near.filter(expr="of_reference").count() if n_near else 0)
        rows, _ = write_rows(result.unique.drop_columns(["text", "order"]), out, max_rows_per_file=self.part_rows)
        return self.counted(rows)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        n_near, n_near_seed = self._near
        passed = self.filters["passed"]
        return {"passed_filters": passed, "duplicate_exact": passed - rows - n_near,
                "near_duplicate": n_near - n_near_seed, "near_duplicate_of_seed": n_near_seed,
                "dedup": self.cfg.model_dump()}
