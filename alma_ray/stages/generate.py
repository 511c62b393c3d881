"""Sampling through vLLM actor pools: one pool per checkpoint, N samples per prompt in one request.

``Sampler`` is the Ray Data actor (a callable class given to ``map_batches``); ``generate_responses`` builds one
pool per checkpoint, asks each for its share of the N samples, and unions the streams.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from ray.data import ActorPoolStrategy, Dataset

from alma_ray.config import Config, EngineConfig
from alma_ray.engine import actor_remote_args, build_llm, format_prompt, uses_chat_template

TOO_LONG = "prompt_too_long"


def stable_seed(*parts: object) -> int:
    """A 31-bit sampling seed derived from the row's identity: reruns sample the same text."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


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
    ``checkpoint``, ``sample_index``, ``seed``, ``response``, token counts, ``finish_reason`` and
    ``cumulative_logprob``. A prompt too long for the context yields ``n`` rows with an empty response and
    ``finish_reason = "prompt_too_long"``, so every (prompt, checkpoint, sample) is accounted for.
    """

    def __init__(self, model: str, *, checkpoint: str, n: int, sampling: dict[str, Any], chat: bool | None,
                 completion_template: str, engine: EngineConfig, use_gpu: bool, seed_salt: str) -> None:
        self.llm = build_llm(model, engine, use_gpu=use_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = uses_chat_template(self.tokenizer, chat)
        self.checkpoint, self.n, self.sampling = checkpoint, n, sampling
        self.template, self.seed_salt = completion_template, seed_salt
        self.max_prompt_tokens = engine.max_model_len - sampling["max_tokens"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from vllm import SamplingParams, TokensPrompt

        texts = [format_prompt(self.tokenizer, p, chat=self.chat, completion_template=self.template)
                 for p in batch["prompt"]]
        # Chat templates carry their own special tokens; plain completions get the tokenizer's BOS.
        token_ids = [self.tokenizer.encode(t, add_special_tokens=not self.chat) for t in texts]
        seeds = [stable_seed(self.seed_salt, self.checkpoint, pid) for pid in batch["prompt_id"]]
        fits = [i for i, ids in enumerate(token_ids) if len(ids) <= self.max_prompt_tokens]
        outputs = dict(zip(fits, self.llm.generate(
            [TokensPrompt(prompt_token_ids=token_ids[i]) for i in fits],
            [SamplingParams(n=self.n, seed=seeds[i], logprobs=0, **self.sampling) for i in fits],
            use_tqdm=False,
        )))
        rows: dict[str, list[Any]] = {k: [] for k in [*batch, "checkpoint", "sample_index", "seed", "response",
                                                      "prompt_tokens", "output_tokens", "finish_reason",
                                                      "cumulative_logprob"]}
        for i in range(len(texts)):
            completions = outputs[i].outputs if i in outputs else [None] * self.n
            for j, c in enumerate(completions):
                for key, column in batch.items():
                    rows[key].append(column[i].item() if hasattr(column[i], "item") else column[i])
                rows["checkpoint"].append(self.checkpoint)
                rows["sample_index"].append(j)
                rows["seed"].append(seeds[i])
                rows["prompt_tokens"].append(len(token_ids[i]))
                rows["response"].append(c.text.strip() if c else "")
                rows["output_tokens"].append(len(c.token_ids) if c else 0)
                rows["finish_reason"].append(str(c.finish_reason) if c else TOO_LONG)
                rows["cumulative_logprob"].append(float(c.cumulative_logprob or 0.0) if c else 0.0)
        return rows


def sample_pool(prompts: Dataset, *, model: str, checkpoint: str, n: int, sampling: dict[str, Any],
                chat: bool | None, completion_template: str, config: Config, pool_size: int,
                seed_salt: str) -> Dataset:
    """One vLLM actor pool over ``prompts``: ``n`` samples per row from ``model``."""
    res = config.resources
    return prompts.map_batches(
        Sampler,
        fn_constructor_kwargs=dict(model=model, checkpoint=checkpoint, n=n, sampling=sampling, chat=chat,
                                   completion_template=completion_template, engine=config.engine,
                                   use_gpu=res.use_gpu, seed_salt=seed_salt),
        batch_size=config.engine.batch_size,
        compute=ActorPoolStrategy(size=pool_size),
        **actor_remote_args(config.engine, use_gpu=res.use_gpu, cpus=res.cpus_per_engine),
    )


def generate_responses(prompts: Dataset, config: Config, *, round_index: int,
                       checkpoints: dict[str, str]) -> Dataset:
    """N responses per prompt, split by weight across the configured checkpoints present in ``checkpoints``
    (name -> model folder; a checkpoint absent this round, like ``latest`` in round 1, gives its share away)."""
    gen = config.generation
    present = [c for c in gen.checkpoints if c.name in checkpoints]
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens,
                    stop=gen.stop or None)
    streams = []
    for ckpt, share in zip(present, split_samples(gen.n, [c.weight for c in present])):
        if share == 0:
            continue
        streams.append(sample_pool(
            prompts, model=checkpoints[ckpt.name], checkpoint=ckpt.name, n=share, sampling=sampling,
            chat=ckpt.chat_template, completion_template=gen.completion_template, config=config,
            pool_size=config.resources.engines_per_checkpoint,
            seed_salt=f"{config.seed}:{round_index}:responses"))
    return streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
