"""The prompt pool (round 0) and each round's draw from it (ALMA's prompt synthesis and diversification).

Stages, each committed to the run directory and skipped when a rerun finds it done::

    round_000/synthesis    every few-shot candidate, with the filter it failed ("" if none)
    round_000/pool         the candidates that passed, without exact or near duplicates (of each other or seeds)
    round_000/embeddings   prompt_id -> base-model embedding
    round_000/clusters     the pool with cluster_id (k-means, K clusters) + centroids.npy
    round_NNN/prompts      K prompts from K distinct clusters, none drawn by an earlier round
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray.data
from ray.data import Dataset

from alma_ray.config import Config
from alma_ray.diversity import diversity
from alma_ray.progress import StageProgress
from alma_ray.stages.cluster import PoolTooSmallError, assign_clusters, size_histogram, train_centroids
from alma_ray.stages.dedup import dedup, reference_rows
from alma_ray.stages.draw import draw_prompts, ledger
from alma_ray.stages.embed import embed_prompts
from alma_ray.stages.select import shuffle_partitions
from alma_ray.stages.synthesize import filter_counts, synthesize_candidates
from alma_ray.store import RunStore, StageOutput, StageResult, parquet_rows

Add = Callable[[StageResult], StageResult]


def _read(result: StageResult) -> Dataset:
    return ray.data.read_parquet(str(result.path))


def sample_rows(ds: Dataset, n: int, *, columns: list[str]) -> pd.DataFrame:
    """Up to ``n`` rows of ``ds`` (only ``columns``) on the driver, for metrics."""
    batch = ds.select_columns(columns).take_batch(n, batch_format="pandas")
    return batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)


def embeddings_of(embeddings: Dataset, ids: list[str]) -> dict[str, np.ndarray]:
    """prompt_id -> embedding for ``ids`` (metric samples, so a bounded set), by one scan."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(sorted(set(ids)), type=pa.string())
    found = embeddings.select_columns(["prompt_id", "embedding"]).map_batches(
        lambda t: t.filter(pc.is_in(t["prompt_id"], value_set=wanted)), batch_format="pyarrow").take_all()
    return {row["prompt_id"]: np.asarray(row["embedding"], dtype=np.float32) for row in found}


def sample_diversity(rows: pd.DataFrame, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    return diversity(list(rows["prompt"]), np.stack([vectors[i] for i in rows["prompt_id"]]), rows["cluster_id"])


def build_pool(config: Config, store: RunStore, *, base: str, seeds: list[str], heldout: list[str],
               add: Add, seed_bad_lines: int = 0) -> tuple[StageResult, StageResult]:
    """Run (or resume) the round-0 pool stages from the few-shot ``seeds`` (``heldout`` prompts are never shown
    and never kept); returns the (clusters, embeddings) results."""
    syn = config.synthesis
    partitions = shuffle_partitions(syn.num_requests)

    def write_synthesis(out: Path) -> StageOutput:
        with StageProgress("synthesis", syn.num_requests) as progress:
            synthesize_candidates(config, base_model=base, seeds=seeds, known=heldout,
                                  progress=progress.counter).write_parquet(str(out))
        counts = filter_counts(ray.data.read_parquet(str(out)))
        window = (progress.final.get("last_done") or 0) - (progress.final.get("first_start") or 0)
        return StageOutput(rows=parquet_rows(out), stats={
            "filters": counts, "fewshot_seeds": len(seeds), "seed_bad_lines_skipped": seed_bad_lines,
            "steady_requests_per_s": syn.num_requests / window if window > 0 else None})

    synthesis = add(store.run_stage(0, "synthesis", write_synthesis))

    def write_pool(out: Path) -> StageOutput:
        candidates = _read(synthesis).filter(expr="reject == ''").map_batches(
            lambda b: b.assign(prompt=b["text"], order=b["request_index"]).drop(columns=["reject"]),
            batch_format="pandas")
        result = dedup(candidates, reference_rows([*seeds, *heldout]), cfg=syn.dedup, partitions=partitions)
        near = result.near.materialize()
        result.unique.drop_columns(["text", "order"]).write_parquet(str(out))
        rows = parquet_rows(out)
        if rows == 0:
            raise PoolTooSmallError("no synthesized prompt survived the filters and dedup: raise "
                                    "synthesis.num_requests or relax synthesis.min_chars/max_chars "
                                    f"(filters: {synthesis.manifest.stats['filters']})")
        n_near = near.count()
        n_near_seed = near.filter(expr="of_reference").count() if n_near else 0
        passed_n = synthesis.manifest.stats["filters"]["passed"]
        return StageOutput(rows=rows, stats={
            "passed_filters": passed_n, "duplicate_exact": passed_n - rows - n_near,
            "near_duplicate": n_near - n_near_seed, "near_duplicate_of_seed": n_near_seed,
            "dedup": syn.dedup.model_dump()})

    pool = add(store.run_stage(0, "pool", write_pool, {"synthesis": synthesis.manifest}))

    def write_embeddings(out: Path) -> StageOutput:
        t0 = time.time()
        embed_prompts(_read(pool), config, model=base).write_parquet(str(out))
        rows = parquet_rows(out)
        first = pq.read_table(sorted(out.glob("*.parquet"))[0], columns=["embedding"]).slice(0, 1)
        return StageOutput(rows=rows, stats={"model": config.base_model, "dim": len(first.to_pylist()[0]["embedding"]),
                                             "prompts_per_s": rows / (time.time() - t0),
                                             **syn.embedding.model_dump()})

    embeddings = add(store.run_stage(0, "embeddings", write_embeddings, {"pool": pool.manifest}))

    def write_clusters(out: Path) -> StageOutput:
        k = config.clusters
        t0 = time.time()
        emb = _read(embeddings)
        centroids = train_centroids(emb, k=k, cfg=syn.clustering, rows=embeddings.manifest.rows, seed=config.seed)
        train_s = time.time() - t0
        np.save(out / "centroids.npy", centroids)
        assign_clusters(emb, centroids).write_parquet(str(out / "data"))
        clustered = ray.data.read_parquet(str(out / "data"))
        sizes = [int(r["count()"]) for r in clustered.groupby("cluster_id", num_partitions=1).count().iter_rows()]
        m = syn.clustering.metric_sample
        fraction = min(1.0, 1.5 * m / embeddings.manifest.rows)
        sample = sample_rows(emb.random_sample(fraction, seed=config.seed) if fraction < 1 else emb, m,
                             columns=["prompt", "embedding"])
        vectors = np.stack(list(sample["embedding"]))
        return StageOutput(rows=parquet_rows(out / "data"), stats={
            "clusters": k, "nonempty_clusters": len(sizes), "largest_cluster": max(sizes),
            "size_histogram": size_histogram(sizes, k), "kmeans_train_s": round(train_s, 2),
            "diversity": diversity(list(sample["prompt"]), vectors, (vectors @ centroids.T).argmax(1))})

    clusters = add(store.run_stage(0, "clusters", write_clusters, {"embeddings": embeddings.manifest}))
    return clusters, embeddings


def write_round_prompts(config: Config, store: RunStore, round_index: int, *, clusters: StageResult,
                        embeddings: StageResult, add: Add) -> StageResult:
    """Run (or resume) round ``round_index``'s draw: K unused prompts from K distinct clusters."""
    partitions = shuffle_partitions(config.synthesis.num_requests)
    m = min(config.prompts_per_round, config.synthesis.clustering.metric_sample)

    def write(out: Path) -> StageOutput:
        pool = ray.data.read_parquet(str(clusters.path / "data"))  # no embeddings: they stay in their stage
        draw = draw_prompts(pool, ledger(store, round_index), k=config.prompts_per_round, seed=config.seed,
                            round_index=round_index, partitions=partitions)
        draw.drawn.write_parquet(str(out))
        rows = parquet_rows(out)
        columns = ["prompt_id", "prompt", "cluster_id"]
        drawn = sample_rows(ray.data.read_parquet(str(out)), m, columns=columns)  # rows land in hash order
        random = sample_rows(draw.random, m, columns=columns)
        vectors = embeddings_of(_read(embeddings), [*drawn["prompt_id"], *random["prompt_id"]])
        return StageOutput(rows=rows, stats={
            "ledger_before": clusters.manifest.rows - draw.unused_prompts,  # every used prompt is in the pool
            "unused_prompts": draw.unused_prompts, "clusters_available": draw.clusters_available,
            "diversity": {"cluster_draw": sample_diversity(drawn, vectors),
                          "random_draw": sample_diversity(random, vectors)}})

    return add(store.run_stage(round_index, "prompts", write, {"clusters": clusters.manifest}))
