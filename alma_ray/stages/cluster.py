"""k-means over prompt embeddings (faiss), trained on a sample, then streaming assignment in Ray Data.

faiss's k-means is what ALMA-scale clustering (1M centroids) runs on; it trains on at most
``K * max_points_per_centroid`` sampled vectors (its own guidance), and every prompt is then assigned to its
nearest centroid by Ray Data tasks that read the centroids from the object store. Embeddings are unit length,
so the k-means is spherical (inner product).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.data import Dataset

from alma_ray.config import ClusteringConfig
from alma_ray.diversity import diversity
from alma_ray.errors import AlmaError
from alma_ray.ids import stable_seed
from alma_ray.stages.base import Stage, sample_rows, write_rows
from alma_ray.store import DATA, StageOutput


class PoolTooSmallError(AlmaError, ValueError):
    """Fewer prompts (or clusters) than a step needs; the message says what to change."""


def _vectors(column: Any) -> np.ndarray:
    """An embedding column (a tensor column or a list of arrays) as one contiguous float32 matrix."""
    return np.ascontiguousarray(np.stack(list(column)), dtype=np.float32)


def _in_sample(row: dict[str, Any], *, fraction: float, seed: int) -> bool:
    return stable_seed(seed, "kmeans-sample", str(row["prompt_id"])) < fraction * 2**31


def train_centroids(embeddings: Dataset, *, k: int, cfg: ClusteringConfig, rows: int, seed: int) -> np.ndarray:
    """Centroids (k x dim, unit length) from k-means on a random sample of ``embeddings``."""
    import faiss

    if rows < k:
        raise PoolTooSmallError(
            f"the prompt pool has {rows} prompts, fewer than the {k} clusters asked for: raise "
            "synthesis.num_requests, or lower synthesis.clustering.clusters / prompts_per_round")
    want = min(rows, k * cfg.max_points_per_centroid)
    sample = embeddings.select_columns(["prompt_id", "embedding"])
    if want < rows:  # a sample by prompt id, not by position: the same rows whatever the files' order
        sample = sample.filter(functools.partial(_in_sample, fraction=min(1.0, 1.2 * want / rows), seed=seed))
    batch = sample.take_batch(want, batch_format="numpy")
    if len(batch["prompt_id"]) < k:  # the sample came out short: take the first rows instead
        batch = embeddings.select_columns(["prompt_id", "embedding"]).take_batch(want, batch_format="numpy")
    order = np.argsort(batch["prompt_id"], kind="stable")  # k-means sees its points in one order on every run
    x = _vectors(batch["embedding"])[order]
    kmeans = faiss.Kmeans(x.shape[1], k, niter=cfg.iterations, seed=seed, spherical=True,
                          max_points_per_centroid=cfg.max_points_per_centroid, min_points_per_centroid=1,
                          verbose=False)
    kmeans.train(x)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def _assign(batch: dict[str, np.ndarray], *, centroids: ray.ObjectRef) -> dict[str, Any]:
    import faiss

    c = ray.get(centroids)  # nested in fn_kwargs, so Ray does not resolve it: read from the object store here
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    similarity, nearest = index.search(_vectors(batch["embedding"]), 1)
    out = {k: v for k, v in batch.items() if k != "embedding"}
    return {**out, "cluster_id": nearest[:, 0].astype(np.int64), "cluster_similarity": similarity[:, 0]}


def assign_clusters(embeddings: Dataset, centroids: np.ndarray) -> Dataset:
    """Every row with its nearest centroid (``cluster_id``) and the cosine similarity to it; embeddings dropped."""
    ref = ray.put(centroids)
    return embeddings.map_batches(_assign, fn_kwargs=dict(centroids=ref),  # type: ignore[arg-type]
                                  batch_format="numpy", batch_size=4096)


def size_histogram(sizes: list[int], k: int) -> dict[str, int]:
    """Clusters by size, in power-of-two bins ("0", "1", "2-3", "4-7", ...), empty clusters included."""
    counts = np.bincount(np.asarray(sizes, dtype=np.int64), minlength=1) if sizes else np.zeros(1, np.int64)
    hist: dict[str, int] = {"0": k - len(sizes)}
    lo = 1
    while lo <= (max(sizes) if sizes else 0):
        hi = 2 * lo - 1
        hist[str(lo) if lo == hi else f"{lo}-{hi}"] = int(counts[lo:hi + 1].sum())
        lo *= 2
    return hist


def cluster_sizes(table: Any, *, k: int) -> np.ndarray:
    """How many of the rows a write task wrote fall in each of the k clusters."""
    return np.bincount(table.column("cluster_id").to_numpy(), minlength=k)


@dataclass
class Cluster(Stage):
    """The pool with each prompt's ``cluster_id`` (in ``data/``) and the centroids (``centroids.npy``)."""

    k: int
    cfg: ClusteringConfig
    seed: int
    name: str = "clusters"
    needs: tuple[str, ...] = ("prompt_id", "prompt", "embedding")

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        assert data is not None
        t0 = time.time()
        centroids = train_centroids(data, k=self.k, cfg=self.cfg, rows=self.input_rows or 0, seed=self.seed)
        train_s = time.time() - t0
        np.save(out / "centroids.npy", centroids)
        rows, tallies = write_rows(assign_clusters(data, centroids), out / DATA,
                                   functools.partial(cluster_sizes, k=self.k), max_rows_per_file=self.part_rows)
        sizes = [int(c) for c in np.sum(tallies, axis=0) if c] if tallies else []
        m = self.cfg.metric_sample
        fraction = min(1.0, 1.5 * m / max(1, self.input_rows or 0))
        sample = sample_rows(data.random_sample(fraction, seed=self.seed) if fraction < 1 else data, m,
                             columns=["prompt", "embedding"])
        vectors = np.stack(list(sample["embedding"]))
        return self.counted(
            rows, clusters=self.k, nonempty_clusters=len(sizes), largest_cluster=max(sizes),
            size_histogram=size_histogram(sizes, self.k), kmeans_train_s=round(train_s, 2),
            diversity=diversity(list(sample["prompt"]), vectors, (vectors @ centroids.T).argmax(1)))
