"""Each round's prompts: one never-used prompt from each of K distinct clusters of the pool (ALMA).

The ledger of used prompts is the set of committed ``round_*/prompts`` stages: a round's draw is written
atomically with its manifest (alma_ray.store), so a crash before the commit leaves the ledger as it was and the
rerun draws the same prompts (the draw is a pure function of the pool, the ledger, the run seed and the round);
after the commit, a rerun skips the stage. Nothing is collected on the driver: the draw is an anti-join with
the ledger, a per-cluster minimum of a seeded hash rank, and a join back. ``DrawPrompts`` is the stage.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data import Dataset
from ray.data.aggregate import Min

from alma_ray.diversity import diversity
from alma_ray.stages.base import SMALL_ROWS, Stage, sample_rows, write_rows, write_table
from alma_ray.stages.cluster import PoolTooSmallError
from alma_ray.store import RunStore, StageOutput, StageResult, StoreError, input_path


def _rank(values: pd.Series, salt: str) -> np.ndarray:
    """A seeded 63-bit hash of each value: sorting by it is a random order that reruns reproduce."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{salt}:{v}".encode(), digest_size=8).digest(), "little") >> 1
                     for v in values], dtype=np.int64)


def ledger(store: RunStore, round_index: int, first: int = 1) -> list[StageResult]:
    """The committed ``prompts`` stages of the rounds ``first`` .. ``round_index`` - 1 (``first``: the first round
    that draws prompts; 2 when round 1 is seed SFT)."""
    stages = []
    for r in range(first, round_index):
        done = store.done(r, "prompts")
        if done is None:
            raise StoreError(f"round {r} has no committed prompts, so round {round_index} cannot know which "
                             f"prompts are used; run the rounds in order (delete {store.path(round_index, '')})")
        stages.append(done)
    return stages


@dataclass
class Draw:
    drawn: Dataset
    """The round's prompts: the pool's columns plus ``round`` and ``draw_rank``."""
    random: Dataset
    """The same number of unused prompts drawn at random, ignoring clusters (for the diversity comparison)."""
    unused_prompts: int
    clusters_available: int


def draw_prompts(pool: Dataset, used: Dataset | None, *, k: int, seed: int, round_index: int,
                 partitions: int) -> Draw:
    """K prompts from K distinct clusters, none in ``used``; a seeded random prompt per cluster and random
    clusters when more than K have unused prompts."""
    unused = pool if used is None else pool.join(used, "left_anti", partitions, on=("prompt_id",))
    salt = f"{seed}:{round_index}:draw"

    def ranked_batch(batch: pd.DataFrame) -> pd.DataFrame:
        return batch.assign(round=round_index, draw_rank=_rank(batch["prompt_id"], salt))

    ranked = unused.map_batches(ranked_batch, batch_format="pandas").materialize()
    per_cluster = ranked.groupby("cluster_id", num_partitions=partitions).aggregate(
        Min("draw_rank", alias_name="best")).materialize()
    available, remaining = per_cluster.count(), ranked.count()
    if available < k:
        raise PoolTooSmallError(_too_few(round_index, k, available, remaining))
    picks = per_cluster.map_batches(
        lambda b: b.assign(cluster_rank=_rank(b["cluster_id"], salt + ":cluster")), batch_format="pandas"
    ).sort("cluster_rank").limit(k)
    drawn = ranked.join(picks.drop_columns(["cluster_rank"]), "inner", partitions,
                        on=("cluster_id", "draw_rank"), right_on=("cluster_id", "best"))  # type: ignore[arg-type]
    return Draw(drawn=drawn, random=ranked.sort("draw_rank").limit(k), unused_prompts=remaining,
                clusters_available=available)


def draw_frame(pool: pd.DataFrame, used: set[str], *, k: int, seed: int, round_index: int
               ) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """``draw_prompts`` on one frame (the small path): (drawn, random draw, unused prompts, clusters available).
    The same ranks and picks, so both paths draw the same prompts."""
    salt = f"{seed}:{round_index}:draw"
    ranked = pool[~pool.prompt_id.isin(used)].assign(round=round_index)
    ranked = ranked.assign(draw_rank=_rank(ranked["prompt_id"], salt))
    best = ranked.groupby("cluster_id", sort=False)["draw_rank"].min().rename("best").reset_index()
    if len(best) < k:
        raise PoolTooSmallError(_too_few(round_index, k, len(best), len(ranked)))
    picks = best.assign(cluster_rank=_rank(best["cluster_id"], salt + ":cluster")).sort_values("cluster_rank").head(k)
    drawn = ranked.merge(picks[["cluster_id", "best"]], left_on=["cluster_id", "draw_rank"],
                         right_on=["cluster_id", "best"]).drop(columns=["best"])
    return drawn, ranked.sort_values("draw_rank").head(k), len(ranked), len(best)


def _too_few(round_index: int, k: int, available: int, remaining: int) -> str:
    return (f"round {round_index} needs prompts_per_round={k} prompts from distinct clusters, but only {available} "
            f"clusters still have unused prompts ({remaining} unused prompts in all): raise synthesis.num_requests "
            "(a bigger pool; delete round_000 to rebuild it), or lower prompts_per_round or rounds")


def draw_small(pool_dir: str, used_dirs: list[str], embeddings_dir: str, out: str, *, k: int, seed: int,
                round_index: int, m: int, max_rows_per_file: int | None = None) -> dict[str, Any]:
    """The whole draw of a small pool in one task: the pool and the ledger read whole, the drawn rows written to
    ``out``, the metric samples' embeddings looked up. A refusal comes back as ``error``."""
    import pyarrow.parquet as pq

    pool = pq.read_table(pool_dir).to_pandas()
    used = {i for d in used_dirs for i in pq.read_table(d, columns=["prompt_id"]).column("prompt_id").to_pylist()}
    try:
        drawn, random, unused, available = draw_frame(pool, used, k=k, seed=seed, round_index=round_index)
    except PoolTooSmallError as e:
        return {"error": str(e)}
    write_table(pa.Table.from_pandas(drawn, preserve_index=False), out, max_rows_per_file=max_rows_per_file)
    columns = ["prompt_id", "prompt", "cluster_id"]
    samples = drawn[columns].head(m), random[columns].head(m)
    wanted = pa.array(sorted({*samples[0].prompt_id, *samples[1].prompt_id}), type=pa.string())
    emb = pq.read_table(embeddings_dir, columns=["prompt_id", "embedding"])
    emb = emb.filter(pc.is_in(emb["prompt_id"].cast(pa.string()), value_set=wanted)).to_pylist()
    vectors = {r["prompt_id"]: np.asarray(r["embedding"], dtype=np.float32) for r in emb}
    return {"rows": len(drawn), "unused": unused, "available": available,
            "diversity": {"cluster_draw": sample_diversity(samples[0], vectors),
                          "random_draw": sample_diversity(samples[1], vectors)}}


def embeddings_of(embeddings: Dataset, ids: list[str]) -> dict[str, np.ndarray]:
    """prompt_id -> embedding for ``ids`` (metric samples, so a bounded set), by one scan."""
    wanted = pa.array(sorted(set(ids)), type=pa.string())
    found = embeddings.select_columns(["prompt_id", "embedding"]).map_batches(
        lambda t: t.filter(pc.is_in(t["prompt_id"], value_set=wanted)), batch_format="pyarrow").take_all()
    return {row["prompt_id"]: np.asarray(row["embedding"], dtype=np.float32) for row in found}


def sample_diversity(rows: pd.DataFrame, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    return diversity(list(rows["prompt"]), np.stack([vectors[i] for i in rows["prompt_id"]]), rows["cluster_id"])


def head_rows(table: Any, *, columns: list[str], n: int) -> pd.DataFrame:
    """The first ``n`` rows (``columns``) a write task wrote: the metric sample of a draw."""
    return table.select(columns).slice(0, n).to_pandas()


@dataclass
class DrawPrompts(Stage):
    """A round's prompts: K unused prompts from K distinct clusters of the pool (the input: the clustered pool),
    with the draw's diversity against a random draw of as many unused prompts (embeddings from ``embeddings``)."""

    k: int
    seed: int
    round_index: int
    used: list[StageResult]
    """The ledger: the earlier rounds' committed prompts stages (``ledger``)."""
    embeddings: StageResult
    metric_sample: int
    partitions: int
    name: str = "prompts"
    needs: tuple[str, ...] = ("prompt_id", "prompt", "cluster_id")

    def reads(self) -> list[StageResult]:
        return [*self.used, self.embeddings]

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        assert data is not None and self.input_dir is not None
        pool_rows = self.input_rows or 0
        used = [input_path(u.path) for u in self.used]
        embeddings = input_path(self.embeddings.data)
        if pool_rows <= SMALL_ROWS:  # one task, no shuffle
            task = ray.remote(draw_small).options(num_cpus=1)  # type: ignore[arg-type]
            done = ray.get(task.remote(input_path(self.input_dir), used, embeddings, str(out),  # type: ignore
                                       k=self.k, seed=self.seed, round_index=self.round_index,
                                       m=min(self.k, self.metric_sample), max_rows_per_file=self.part_rows))
            if "error" in done:
                raise PoolTooSmallError(done["error"])
            return self.counted(done["rows"], ledger_before=pool_rows - done["unused"],
                                unused_prompts=done["unused"], clusters_available=done["available"],
                                diversity=done["diversity"])
        used_rows = ray.data.read_parquet(used).select_columns(["prompt_id"]) if used else None
        draw = draw_prompts(data, used_rows, k=self.k, seed=self.seed, round_index=self.round_index,
                            partitions=self.partitions)
        m, columns = min(self.k, self.metric_sample), ["prompt_id", "prompt", "cluster_id"]
        rows, tallies = write_rows(draw.drawn, out, functools.partial(head_rows, columns=columns, n=m),
                                   max_rows_per_file=self.part_rows)
        drawn = pd.concat(tallies).head(m) if tallies else pd.DataFrame(columns=columns)
        random = sample_rows(draw.random, m, columns=columns)
        vectors = embeddings_of(ray.data.read_parquet(embeddings),
                                [*drawn["prompt_id"], *random["prompt_id"]])
        return self.counted(
            rows, ledger_before=pool_rows - draw.unused_prompts,  # every used prompt is in the pool
            unused_prompts=draw.unused_prompts, clusters_available=draw.clusters_available,
            diversity={"cluster_draw": sample_diversity(drawn, vectors),
                       "random_draw": sample_diversity(random, vectors)})
