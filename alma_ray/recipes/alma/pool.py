"""ALMA's prompt pool (round 0) and each round's draw from it (prompt synthesis and diversification).

Stages, each committed to the run directory and skipped when a rerun finds it done::

    round_000/synthesis    every few-shot candidate, with the filter it failed ("" if none)
    round_000/pool         the candidates that passed, without exact or near duplicates (of each other or seeds)
    round_000/embeddings   prompt_id -> base-model embedding
    round_000/clusters     the pool with cluster_id (k-means, K clusters) in data/ + centroids.npy
    round_NNN/prompts      K prompts from K distinct clusters, none drawn by an earlier round
"""

from __future__ import annotations

from dataclasses import dataclass

from alma_ray.config import AlmaConfig
from alma_ray.engines.registry import Engines
from alma_ray.recipes.base import Run
from alma_ray.stages.base import shuffle_partitions
from alma_ray.stages.cluster import Cluster
from alma_ray.stages.dedup import Dedup
from alma_ray.stages.draw import DrawPrompts, ledger
from alma_ray.stages.embed import Embed
from alma_ray.stages.synthesize import Synthesize
from alma_ray.store import StageResult


@dataclass
class PromptPool:
    clusters: StageResult
    embeddings: StageResult


def synthesize(config: AlmaConfig, run: Run, engines: Engines, *, base: str, seeds: list[str], heldout: list[str],
               seed_bad_lines: int = 0) -> StageResult:
    """Run (or resume) round 0's few-shot synthesis from ``seeds`` with the base model's engines (``heldout``
    prompts are never shown and never kept). The engines stay up: the recipe gives them back when it is done
    with the base model."""
    return run.stage(0, Synthesize(config.synthesis, model=base, source=config.base_model, seeds=seeds,
                                   known=heldout, seed=config.seed, engines=engines, seed_bad_lines=seed_bad_lines))


def build_pool(config: AlmaConfig, run: Run, engines: Engines, synthesis: StageResult, *, base: str,
               seeds: list[str], heldout: list[str]) -> PromptPool:
    """Run (or resume) the rest of round 0's pool from the ``synthesis`` candidates: dedup (against each other,
    the ``seeds`` and the ``heldout`` prompts), embeddings, k-means."""
    syn, engine, res = config.synthesis, config.engine, config.resources
    if not res.use_gpu:
        engines.make_room(res.engines_per_checkpoint * res.cpus_per_engine)  # the embedder's pool
    pool = run.stage(0, Dedup(syn.dedup, reference=[*seeds, *heldout], partitions=shuffle_partitions(
        syn.num_requests), filters=synthesis.manifest.stats["filters"]), read=synthesis)
    embeddings = run.stage(0, Embed(base, label=config.base_model, cfg=syn.embedding, engine=engine, resources=res),
                           read=pool)
    clusters = run.stage(0, Cluster(config.clusters, syn.clustering, seed=config.seed), read=embeddings)
    return PromptPool(clusters, embeddings)


def draw(config: AlmaConfig, run: Run, round_index: int, pool: PromptPool) -> StageResult:
    """Run (or resume) round ``round_index``'s draw: K unused prompts from K distinct clusters."""
    first = 2 if config.seed_sft is not None else 1  # the first round that draws (round 1 may be seed SFT)
    return run.stage(round_index, DrawPrompts(
        k=config.prompts_per_round, seed=config.seed, round_index=round_index,
        used=ledger(run.store, round_index, first), embeddings=pool.embeddings,
        metric_sample=config.synthesis.clustering.metric_sample,
        partitions=shuffle_partitions(config.synthesis.num_requests)), read=pool.clusters)
