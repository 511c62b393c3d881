"""The sampling engine: one vLLM engine for one model in a long-lived Ray actor, fed batches by light Ray Data
tasks (``alma_ray.stages.generate``); every stage that samples the model shares it (``Engines.samplers``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from alma_ray.config import EngineConfig
from alma_ray.engines.build import build_llm, prompt_ids, uses_chat_template
from alma_ray.ids import stable_seed

TOO_LONG = "prompt_too_long"
"""The finish reason of a prompt that left no room for ``max_tokens`` (``generation.too_long: skip``)."""


@dataclass(frozen=True)
class SampleRequest:
    """What one stage asks of a sampling engine for each of its batches."""

    checkpoint: str
    n: int
    sampling: dict[str, Any]
    chat: bool | None
    completion_template: str
    seed_salt: str
    too_long: str = "skip"
    model: str = ""
    """The folder the engine must hold for this request ("": whatever it holds); an engine holding another loads
    it first (a pool taken over from another model, or an actor Ray restarted with its first model)."""


class SamplingEngine:
    """One vLLM engine for one model, long-lived in its own Ray actor (``Engines``): every stage
    that samples this model sends it batches; each input row yields ``n`` output rows.

    Input columns: ``prompt``, ``prompt_id`` and any lineage columns (passed through). Output adds
    ``checkpoint``, ``sample_index``, ``seed``, ``response``, token counts, ``finish_reason``,
    ``cumulative_logprob`` and ``prompt_truncated``. A prompt that leaves no room for ``max_tokens`` is either cut
    to fit (``too_long="truncate"``) or yields ``n`` rows with an empty response and ``finish_reason =
    "prompt_too_long"`` (``"skip"``), so every (prompt, checkpoint, sample index) is accounted for.
    """

    def __init__(self, model: str, *, engine: EngineConfig, use_gpu: bool) -> None:
        self.engine, self.use_gpu = engine, use_gpu
        self.max_model_len = engine.max_model_len
        self.model = ""
        self.llm: Any = None
        self.load(model)

    def load(self, model: str) -> None:
        """Hold ``model`` (an HF folder): the engine it held is shut down first. In a process that has imported
        vLLM once, a new engine for a small model is a few seconds instead of half a minute."""
        if model == self.model:
            return
        started = time.time()
        self.unload()
        self.llm = build_llm(model, self.engine, use_gpu=self.use_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.model = model
        self.ready_at, self.build_s = time.time(), time.time() - started
        self.reported: set[str] = set()

    def reload_weights(self, model: str) -> float:
        """Take ``model``'s weights (an HF folder of the same architecture: the policy after an update) into the
        running engine in place, through vLLM's own reload (``collective_rpc("reload_weights")``), and drop the
        prefix cache computed with the old ones; no new engine, no new process. Returns the seconds it took."""
        started = time.time()
        if self.llm is None:
            self.load(model)
            return time.time() - started
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model})
        self.llm.reset_prefix_cache()
        self.model = model
        return time.time() - started

    def holds(self) -> str:
        """The model folder this engine holds ("" when shut down)."""
        return self.model

    def unload(self) -> None:
        """Shut the engine down and free its memory (weights, KV cache); the process stays, vLLM imported."""
        if self.llm is None:
            return
        import gc

        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm, self.model = None, ""
        gc.collect()
        cleanup_dist_env_and_memory()

    def _encode(self, prompt: str, request: SampleRequest, chat: bool, limit: int) -> tuple[list[int], bool]:
        """Token ids the engine sees, and whether the prompt was cut to fit the context."""
        def encode(text: str) -> list[int]:
            return prompt_ids(self.tokenizer, text, chat=chat, completion_template=request.completion_template)

        ids = encode(prompt)
        if len(ids) <= limit or request.too_long == "skip":
            return ids, False
        body = self.tokenizer.encode(prompt, add_special_tokens=False)
        keep = len(body) - (len(ids) - limit)
        while keep > 0:  # re-tokenizing the cut text can shift a token or two: shrink until it fits
            ids = encode(self.tokenizer.decode(body[:keep]))
            if len(ids) <= limit:
                return ids, True
            keep -= len(ids) - limit
        return ids, False  # the template alone is too long: counted as skipped

    def sample(self, batch: dict[str, np.ndarray], request: SampleRequest, progress: Any = None
               ) -> dict[str, list[Any]]:
        from vllm import SamplingParams, TokensPrompt

        if request.model:
            self.load(request.model)
        started = time.time()
        if progress is not None and (key := progress._actor_id.hex()) not in self.reported:
            self.reported.add(key)  # each stage's progress bar counts this engine once
            progress.ready.remote(self.ready_at, self.build_s)
        limit = self.max_model_len - request.sampling["max_tokens"]
        if limit < 1:
            raise ValueError(f"max_tokens={request.sampling['max_tokens']} leaves no room for a prompt in "
                             f"engine.max_model_len={self.max_model_len}: raise the one or lower the other")
        chat = uses_chat_template(self.tokenizer, request.chat)
        encoded = [self._encode(p, request, chat, limit) for p in batch["prompt"]]
        seeds = [stable_seed(request.seed_salt, request.checkpoint, pid) for pid in batch["prompt_id"]]
        fits = [i for i, (ids, _) in enumerate(encoded) if len(ids) <= limit]
        outputs = dict(zip(fits, self.llm.generate(
            [TokensPrompt(prompt_token_ids=encoded[i][0]) for i in fits],
            [SamplingParams(n=request.n, seed=seeds[i], logprobs=0, **request.sampling) for i in fits],
            use_tqdm=False,
        )))
        rows: dict[str, list[Any]] = {k: [] for k in [*batch, "checkpoint", "sample_index", "seed", "response",
                                                      "prompt_tokens", "output_tokens", "finish_reason",
                                                      "cumulative_logprob", "prompt_truncated"]}
        for i, (ids, truncated) in enumerate(encoded):
            completions = outputs[i].outputs if i in outputs else [None] * request.n
            for j, c in enumerate(completions):
                for key, column in batch.items():
                    rows[key].append(column[i].item() if hasattr(column[i], "item") else column[i])
                rows["checkpoint"].append(request.checkpoint)
                rows["sample_index"].append(j)
                rows["seed"].append(seeds[i])
                rows["prompt_tokens"].append(len(ids))
                rows["response"].append(c.text.strip() if c else "")
                rows["output_tokens"].append(len(c.token_ids) if c else 0)
                rows["finish_reason"].append(str(c.finish_reason) if c else TOO_LONG)
                rows["cumulative_logprob"].append(float(c.cumulative_logprob or 0.0) if c else 0.0)
                rows["prompt_truncated"].append(truncated)
        if progress is not None:
            progress.add.remote(len(rows["response"]), sum(rows["output_tokens"]), started, time.time())
        return rows
