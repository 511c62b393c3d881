"""Sampling through vLLM actor pools: one pool per checkpoint, N samples per prompt in one request.

``Sampler`` is the Ray Data actor (a callable class given to ``map_batches``); ``mix`` splits the N samples of a
prompt across checkpoints (``Share``); ``generate_responses`` builds one pool per share and unions the streams;
``Sample`` is the stage (ALMA's responses, each round's probe answers, the judge build's distill pairs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
from ray.data import ActorPoolStrategy, Dataset

from alma_ray.config import EngineConfig, GenerationConfig, ResourcesConfig
from alma_ray.engine import actor_remote_args, build_llm, prompt_ids, uses_chat_template
from alma_ray.ids import stable_seed
from alma_ray.progress import StageProgress
from alma_ray.stages.base import Stage
from alma_ray.store import StageOutput

TOO_LONG = "prompt_too_long"


def split_samples(n: int, weights: list[float]) -> list[int]:
    """Split N samples across checkpoints by weight (largest remainder); ALMA uses 1:1:1."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)[: n - sum(shares)]:
        shares[i] += 1
    return shares


class Sampler:
    """Ray Data actor holding one vLLM engine; each input row yields ``n`` output rows.

    Input columns: ``prompt``, ``prompt_id`` and any lineage columns (passed through). Output adds
    ``checkpoint``, ``sample_index``, ``seed``, ``response``, token counts, ``finish_reason``,
    ``cumulative_logprob`` and ``prompt_truncated``. A prompt that leaves no room for ``max_tokens`` is either cut
    to fit (``too_long="truncate"``) or yields ``n`` rows with an empty response and ``finish_reason =
    "prompt_too_long"`` (``"skip"``), so every (prompt, checkpoint, sample index) is accounted for.
    """

    def __init__(self, model: str, *, checkpoint: str, n: int, sampling: dict[str, Any], chat: bool | None,
                 completion_template: str, engine: EngineConfig, use_gpu: bool, seed_salt: str,
                 too_long: str = "skip", progress: Any = None) -> None:
        built = time.time()
        self.llm = build_llm(model, engine, use_gpu=use_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = uses_chat_template(self.tokenizer, chat)
        self.checkpoint, self.n, self.sampling = checkpoint, n, sampling
        self.template, self.seed_salt, self.too_long = completion_template, seed_salt, too_long
        self.max_prompt_tokens = engine.max_model_len - sampling["max_tokens"]
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_tokens={sampling['max_tokens']} leaves no room for a prompt in "
                             f"engine.max_model_len={engine.max_model_len}: raise the one or lower the other")
        self.progress = progress
        if progress is not None:
            progress.ready.remote(time.time(), time.time() - built)

    def _encode(self, prompt: str) -> tuple[list[int], bool]:
        """Token ids the engine sees, and whether the prompt was cut to fit the context."""
        def encode(text: str) -> list[int]:
            return prompt_ids(self.tokenizer, text, chat=self.chat, completion_template=self.template)

        ids = encode(prompt)
        if len(ids) <= self.max_prompt_tokens or self.too_long == "skip":
            return ids, False
        body = self.tokenizer.encode(prompt, add_special_tokens=False)
        keep = len(body) - (len(ids) - self.max_prompt_tokens)
        while keep > 0:  # re-tokenizing the cut text can shift a token or two: shrink until it fits
            ids = encode(self.tokenizer.decode(body[:keep]))
            if len(ids) <= self.max_prompt_tokens:
                return ids, True
            keep -= len(ids) - self.max_prompt_tokens
        return ids, False  # the template alone is too long: counted as skipped

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from vllm import SamplingParams, TokensPrompt

        started = time.time()
        encoded = [self._encode(p) for p in batch["prompt"]]
        seeds = [stable_seed(self.seed_salt, self.checkpoint, pid) for pid in batch["prompt_id"]]
        fits = [i for i, (ids, _) in enumerate(encoded) if len(ids) <= self.max_prompt_tokens]
        outputs = dict(zip(fits, self.llm.generate(
            [TokensPrompt(prompt_token_ids=encoded[i][0]) for i in fits],
            [SamplingParams(n=self.n, seed=seeds[i], logprobs=0, **self.sampling) for i in fits],
            use_tqdm=False,
        )))
        rows: dict[str, list[Any]] = {k: [] for k in [*batch, "checkpoint", "sample_index", "seed", "response",
                                                      "prompt_tokens", "output_tokens", "finish_reason",
                                                      "cumulative_logprob", "prompt_truncated"]}
        for i, (ids, truncated) in enumerate(encoded):
            completions = outputs[i].outputs if i in outputs else [None] * self.n
            for j, c in enumerate(completions):
                for key, column in batch.items():
                    rows[key].append(column[i].item() if hasattr(column[i], "item") else column[i])
                rows["checkpoint"].append(self.checkpoint)
                rows["sample_index"].append(j)
                rows["seed"].append(seeds[i])
                rows["prompt_tokens"].append(len(ids))
                rows["response"].append(c.text.strip() if c else "")
                rows["output_tokens"].append(len(c.token_ids) if c else 0)
                rows["finish_reason"].append(str(c.finish_reason) if c else TOO_LONG)
                rows["cumulative_logprob"].append(float(c.cumulative_logprob or 0.0) if c else 0.0)
                rows["prompt_truncated"].append(truncated)
        if self.progress is not None:
            self.progress.add.remote(len(rows["response"]), sum(rows["output_tokens"]), started, time.time())
        return rows


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


def sample_pool(prompts: Dataset, share: Share, *, engine: EngineConfig, resources: ResourcesConfig,
                completion_template: str, too_long: str, seed_salt: str, pool_size: int,
                progress: Any = None) -> Dataset:
    """One vLLM actor pool over ``prompts``: ``share.n`` samples per row from ``share.model`` (plain completions
    use ``completion_template``).

    Ray Data restarts a dead engine actor and retries its batch (``max_restarts``/``max_task_retries`` = -1 for
    actor pools), so a crash costs time, never rows.
    """
    return prompts.map_batches(
        Sampler,
        fn_constructor_kwargs=dict(model=share.model, checkpoint=share.checkpoint, n=share.n,
                                   sampling=share.sampling, chat=share.chat, completion_template=completion_template,
                                   engine=engine, use_gpu=resources.use_gpu, seed_salt=seed_salt,
                                   too_long=too_long, progress=progress),
        batch_size=engine.batch_size,
        compute=ActorPoolStrategy(size=pool_size),
        **actor_remote_args(engine, use_gpu=resources.use_gpu, cpus=resources.cpus_per_engine),
    )


def generate_responses(prompts: Dataset, shares: list[Share], *, engine: EngineConfig, resources: ResourcesConfig,
                       completion_template: str, too_long: str, seed_salt: str, pool_size: int,
                       progress: Any = None) -> Dataset:
    """Every share's samples of every prompt: one actor pool per share, all fed from the same prompt stream; the
    pools run side by side when the cluster has room for all of them, else Ray Data queues them."""
    streams = [sample_pool(prompts, share, engine=engine, resources=resources,
                           completion_template=completion_template, too_long=too_long, seed_salt=seed_salt,
                           pool_size=pool_size, progress=progress) for share in shares]
    return streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]


@dataclass
class Sample(Stage):
    """Sample responses to prompts from a mix of checkpoints, with lineage (checkpoint, sample index, seed).

    The prompts are the input stage's rows, or ``prompts`` when they come from elsewhere (held-out seed prompts).
    Records tokens, tokens/s (end to end and steady), rows per checkpoint and too-long prompts.
    """

    name: str
    shares: list[Share]
    engine: EngineConfig
    resources: ResourcesConfig
    seed_salt: str
    completion_template: str
    too_long: str = "skip"
    pool_size: int = 1
    prompts: list[dict[str, Any]] | None = None
    prompt_rows: int | None = None
    """Rows of the input stage (for the progress bar's total), when the prompts come from one."""
    needs: tuple[str, ...] = ("prompt_id", "prompt")
    empty_hint: str = "no prompts reached the engines: check the input stage"
    _started: float = field(default=0.0, repr=False)
    progress: Any = field(default=None, repr=False)
    """The ``ProgressCounter`` the engine actors report to (``write`` sets its own)."""

    def transform(self, data: Dataset | None) -> Dataset:
        prompts = ray.data.from_items(self.prompts) if self.prompts is not None else data
        assert prompts is not None, f"stage {self.name} has no prompts"
        return generate_responses(prompts, self.shares, engine=self.engine, resources=self.resources,
                                  completion_template=self.completion_template, too_long=self.too_long,
                                  seed_salt=self.seed_salt, pool_size=self.pool_size, progress=self.progress)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        rows = len(self.prompts) if self.prompts is not None else self.prompt_rows
        self._started = time.time()
        with StageProgress(self.name, None if rows is None else rows * sum(s.n for s in self.shares)) as progress:
            self.progress = progress.counter
            result = super().write(data, out)
        result.stats["steady_tok_s"] = progress.final.get("steady_tok_s")
        return result

    def figures(self, out: Path, rows: int) -> dict[str, Any]:
        stats = generation_stats(ray.data.read_parquet(str(out)))
        return {**stats, "tokens_per_s": stats["output_tokens"] / max(time.time() - self._started, 1e-9),
                "checkpoints": {s.checkpoint: s.model for s in self.shares}}


def generation_stats(responses: Dataset) -> dict[str, Any]:
    """Manifest figures for a written responses dataset: tokens, rows per checkpoint, too-long prompts."""
    def indicators(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"checkpoint": batch["checkpoint"], "output_tokens": batch["output_tokens"],
                "skipped_too_long": (batch["finish_reason"] == TOO_LONG).astype(np.int64),
                "truncated": batch["prompt_truncated"].astype(np.int64)}

    from ray.data.aggregate import Count, Sum

    # One pass, grouped by checkpoint: a handful of groups, so one shuffle partition (Ray's default is 200).
    groups = responses.map_batches(indicators, batch_format="numpy").groupby(
        "checkpoint", num_partitions=1).aggregate(
        Count(), Sum("output_tokens"), Sum("skipped_too_long"), Sum("truncated")).take_all()
    return {"output_tokens": sum(int(g["sum(output_tokens)"]) for g in groups),
            "rows_too_long_skipped": sum(int(g["sum(skipped_too_long)"]) for g in groups),
            "rows_prompt_truncated": sum(int(g["sum(truncated)"]) for g in groups),
            "rows_per_checkpoint": {g["checkpoint"]: int(g["count()"]) for g in groups}}
