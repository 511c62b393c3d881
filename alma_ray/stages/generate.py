"""Sampling through vLLM actor pools: one pool per checkpoint, N samples per prompt in one request.

``SamplingEngine`` (``alma_ray.engines.sampler``) holds one vLLM engine in a long-lived Ray actor (the run's
``Engines`` keep a pool of them per model, shared by every stage that samples it); light Ray Data tasks stream
batches to it (``_sample_batch``). ``mix`` splits the N
samples of a prompt across checkpoints (``Share``); ``generate_responses`` feeds every share from one prompt stream
and unions the results; ``Sample`` is the stage (ALMA's responses, each round's probe answers, the judge build's
distill pairs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import Dataset

from alma_ray.config import GenerationConfig
from alma_ray.engines.registry import Engines
from alma_ray.engines.sampler import TOO_LONG, SampleRequest
from alma_ray.ids import stable_seed
from alma_ray.stages.base import Stage
from alma_ray.store import text_digest


def split_samples(n: int, weights: list[float]) -> list[int]:
    """Split N samples across checkpoints by weight (largest remainder); ALMA uses 1:1:1."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)[: n - sum(shares)]:
        shares[i] += 1
    return shares


def _sample_batch(batch: dict[str, np.ndarray], *, engines: list[Any], request: SampleRequest,
                  progress: Any) -> dict[str, list[Any]]:
    """A Ray Data task: hand the batch to one of the model's long-lived engines (chosen by the batch's first
    prompt, so a rerun sends it to the same one) and wait for its rows."""
    import ray

    engine = engines[stable_seed(batch["prompt_id"][0]) % len(engines)]
    return ray.get(engine.sample.remote(batch, request, progress))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Share:
    """One checkpoint's part of a stage's samples: its model folder, samples per prompt and sampling settings."""

    checkpoint: str
    model: str
    n: int
    sampling: dict[str, Any]
    chat: bool | None = None


def mix(gen: GenerationConfig, models: dict[str, str]) -> list[Share]:
    """N samples per prompt split by weight across the configured checkpoints present in ``models`` (name -> model
    folder; a checkpoint absent this round, like ``latest`` in round 1, gives its share away)."""
    present = [c for c in gen.checkpoints if c.name in models]
    if not present:
        raise ValueError(f"none of the checkpoints {[c.name for c in gen.checkpoints]} has a model this round")
    return [Share(c.name, models[c.name], k, gen.sampling(c), c.chat_template)
            for c, k in zip(present, split_samples(gen.n, [c.weight for c in present])) if k]


def sample_pool(prompts: Dataset, share: Share, *, engines: Engines, completion_template: str, too_long: str,
                seed_salt: str, pool_size: int, progress: Any = None) -> Dataset:
    """``share.n`` samples per row of ``prompts`` from ``share.model``'s long-lived engines (``pool_size`` of them;
    plain completions use ``completion_template``). Ray Data streams the batches to them from light tasks.

    A dead engine is restarted by Ray and the batch it held retried (``max_restarts``/``max_task_retries`` = -1),
    so a crash costs time, never rows.
    """
    request = SampleRequest(share.checkpoint, share.n, share.sampling, share.chat, completion_template, seed_salt,
                            too_long, model=share.model)
    actors = engines.samplers(share.model, pool_size)
    return prompts.map_batches(_sample_batch, batch_size=engines.engine.batch_size,  # type: ignore[arg-type]
                               fn_kwargs=dict(engines=actors, request=request, progress=progress),
                               num_cpus=0, concurrency=2 * len(actors))


def generate_responses(prompts: Dataset, shares: list[Share], *, engines: Engines, completion_template: str,
                       too_long: str, seed_salt: str, pool_size: int, progress: Any = None) -> Dataset:
    """Every share's samples of every prompt: one engine pool per share's model, all fed from the same prompt
    stream."""
    streams = [sample_pool(prompts, share, engines=engines, completion_template=completion_template,
                           too_long=too_long, seed_salt=seed_salt, pool_size=pool_size, progress=progress)
               for share in shares]
    return streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]


def sampling_tally(table: pa.Table) -> dict[str, list[int]]:
    """One write task's figures of the responses it wrote: checkpoint -> [rows, output tokens, rows skipped as too
    long, rows whose prompt was truncated]."""
    df = table.select(["checkpoint", "output_tokens", "finish_reason", "prompt_truncated"]).to_pandas()
    df["skipped"] = df.finish_reason == TOO_LONG
    groups = df.groupby("checkpoint").agg(rows=("output_tokens", "size"), tokens=("output_tokens", "sum"),
                                          skipped=("skipped", "sum"), truncated=("prompt_truncated", "sum"))
    return {str(k): [int(v) for v in row] for k, row in groups.iterrows()}


def generation_stats(tallies: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Manifest figures of a written responses stage, merged from its write tasks' ``sampling_tally``: tokens,
    rows per checkpoint, too-long prompts."""
    per: dict[str, np.ndarray] = {}
    for tally in tallies:
        for checkpoint, values in tally.items():
            per[checkpoint] = per.get(checkpoint, np.zeros(4, dtype=np.int64)) + np.asarray(values)
    total = sum(per.values(), np.zeros(4, dtype=np.int64))
    return {"output_tokens": int(total[1]), "rows_too_long_skipped": int(total[2]),
            "rows_prompt_truncated": int(total[3]), "rows_per_checkpoint": {k: int(v[0]) for k, v in per.items()}}


@dataclass
class Sample(Stage):
    """Sample responses to prompts from a mix of checkpoints, with lineage (checkpoint, sample index, seed).

    The prompts are the input stage's rows, or ``prompts`` when they come from elsewhere (held-out seed prompts).
    Records tokens, tokens/s (end to end and steady), rows per checkpoint and too-long prompts.
    """

    name: str
    shares: list[Share]
    engines: Engines
    seed_salt: str
    completion_template: str
    too_long: str = "skip"
    pool_size: int = 1
    prompts: list[dict[str, Any]] | None = None
    needs: tuple[str, ...] = ("prompt_id", "prompt")
    empty_hint: str = "no prompts reached the engines: check the input stage"
    tally = staticmethod(sampling_tally)
    resumable = True
    shows_progress = True

    def loads(self) -> list[str]:
        return [s.model for s in self.shares]

    def sources(self) -> dict[str, str]:
        """The prompts given as a list (held-out probe prompts, distill pairs' seed prompts) are an input."""
        return {"prompts": text_digest(self.prompts)} if self.prompts is not None else {}

    def transform(self, data: Dataset | None) -> Dataset:
        prompts = ray.data.from_items(self.prompts) if data is None and self.prompts is not None else data
        assert prompts is not None, f"stage {self.name} has no prompts"
        return generate_responses(prompts, self.shares, engines=self.engines,
                                  completion_template=self.completion_template, too_long=self.too_long,
                                  seed_salt=self.seed_salt, pool_size=self.pool_size, progress=self.progress)

    def progress_total(self) -> int | None:
        rows = len(self.prompts) if self.prompts is not None else self.input_rows
        return None if rows is None else rows * sum(s.n for s in self.shares)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        stats = generation_stats(tallies)
        return {**stats, "tokens_per_s": stats["output_tokens"] / max(time.time() - self.started, 1e-9),
                "checkpoints": {s.checkpoint: s.model for s in self.shares}}
