"""The reward model as a Ray Serve application (as the judge is): ALMoST's self-play and evaluation (and PPO next)
ask it for scores.

- ``RewardScorer`` holds one vLLM pooling engine on the RM's folder (the ``fit(objective="reward")`` output: a causal LM
  with a scalar ``score`` head). A row reads as in training (``alma_ray.train.data.encode_example``: the dialogue
  template, never a chat template, cut at ``max_seq_len`` from the prompt's start) and its score is the head's raw value
  at the last token (vLLM's classify pooler with the activation off: the Bradley-Terry logit, equal to transformers'
  within float error). An empty response gets no score (flag ``empty``).
- ``RewardReplica`` puts it behind Serve's batching; ``RewardServer`` names one app (the key the run's ``Engines``
  keep it under); ``reward_scores`` is the call Ray Data tasks make through the app's handle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from ray import serve

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.engines.build import SHUTDOWN_POLL_S, actor_remote_args


def as_classifier(model: str) -> dict[str, Any]:
    """vLLM's arguments to load a transformers ``...ForSequenceClassification`` folder: as its causal LM converted to
    a classifier (``convert="classify"``, the ``score`` head loaded from the folder). vLLM's own classes for some
    of these names expect other weight names (Gemma-3's ``Gemma3TextForSequenceClassification`` fails to load),
    the converted causal LM reads the names transformers writes; the value equals transformers' (tested)."""
    import json
    from pathlib import Path

    from vllm import ModelRegistry

    arch = json.loads((Path(model) / "config.json").read_text())["architectures"][0]
    if not arch.endswith("ForSequenceClassification"):
        return {}
    known = set(ModelRegistry.get_supported_archs())
    for name in (arch.replace("ForSequenceClassification", "ForCausalLM"),
                 arch.replace("TextForSequenceClassification", "ForCausalLM")):
        if name in known:
            return {"convert": "classify", "hf_overrides": {"architectures": [name]}}
    return {}


class RewardScorer:
    """One vLLM engine scoring (prompt, response) rows with a reward model."""

    def __init__(self, model: str, *, template: str, max_seq_len: int, engine: EngineConfig, use_gpu: bool) -> None:
        from alma_ray.engines.build import build_llm

        self.template, self.max_seq_len = template, min(max_seq_len, engine.max_model_len)
        self.llm = build_llm(model, engine, use_gpu=use_gpu, runner="pooling", **as_classifier(model))
        self.tokenizer = self.llm.get_tokenizer()

    def score(self, prompts: list[str], responses: list[str]) -> list[dict[str, Any]]:
        from vllm import PoolingParams, TokensPrompt

        from alma_ray.train.data import encode_example

        rows: list[dict[str, Any]] = [{"reward": float("nan"), "reward_flag": "empty"} for _ in prompts]
        todo = [i for i, r in enumerate(responses) if str(r or "").strip()]
        ids = [encode_example(self.tokenizer, str(prompts[i]), str(responses[i]), max_seq_len=self.max_seq_len,
                              completion_template=self.template, eos=False, chat=False,
                              keep_response=True)[0]
               for i in todo]
        outputs = self.llm.classify([TokensPrompt(prompt_token_ids=[int(t) for t in x]) for x in ids],
                                    pooling_params=PoolingParams(use_activation=False), use_tqdm=False) if ids else []
        for i, out in zip(todo, outputs):
            rows[i] = {"reward": float(out.outputs.probs[0]), "reward_flag": ""}
        return rows


def _rows_in(calls: list[list[dict[str, Any]]]) -> int:
    return sum(len(c) for c in calls)


@serve.deployment
class RewardReplica:
    """One reward-model engine behind Serve's batching (one vLLM call at a time, in a worker thread)."""

    def __init__(self, model: str, *, template: str, max_seq_len: int, engine: dict[str, Any], use_gpu: bool,
                 max_batch_size: int) -> None:
        self.scorer = RewardScorer(model, template=template, max_seq_len=max_seq_len,
                                   engine=EngineConfig(**engine), use_gpu=use_gpu)
        self.score.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, max_concurrent_batches=1, batch_size_fn=_rows_in)
    async def score(self, calls: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        flat = [pair for call in calls for pair in call]
        scored = await asyncio.to_thread(self.scorer.score, [p["prompt"] for p in flat],
                                         [p["response"] for p in flat])
        out, at = [], 0
        for call in calls:
            out.append(scored[at : at + len(call)])
            at += len(call)
        return out


@dataclass(frozen=True)
class RewardServer:
    """A reward model served on Ray Serve: its folder, how rows read (template, length) and what lineage calls
    it."""

    model: str
    template: str
    max_seq_len: int
    label: str = ""
    max_batch_size: int = 64
    kind: ClassVar[str] = "rm"
    route: ClassVar[str | None] = None

    @property
    def name(self) -> str:
        return self.label or self.model

    def loads(self) -> list[str]:
        return [self.model]

    def http_options(self) -> dict[str, Any]:
        return {"host": "127.0.0.1"}

    def build(self, engine: EngineConfig, resources: ResourcesConfig) -> Any:
        options = actor_remote_args(engine, use_gpu=resources.use_gpu, cpus=resources.cpus_per_engine)
        return RewardReplica.options(  # type: ignore[attr-defined]
            name="reward-model", num_replicas=resources.judge_engines, ray_actor_options=options,
            max_ongoing_requests=4 * self.max_batch_size, graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S,
        ).bind(self.model, template=self.template, max_seq_len=self.max_seq_len, engine=engine.model_dump(),
               use_gpu=resources.use_gpu, max_batch_size=self.max_batch_size)


def reward_scores(app: str, prompts: list[str], responses: list[str], chunk: int = 64) -> list[dict[str, Any]]:
    """Scores of (prompt, response) rows from the running reward app ``app`` (called from Ray Data tasks)."""
    handle = serve.get_app_handle(app)
    pairs = [{"prompt": str(p), "response": str(r)} for p, r in zip(prompts, responses)]
    calls = [handle.score.remote(pairs[i : i + chunk]) for i in range(0, len(pairs), chunk)]
    return [row for call in calls for row in call.result()]


def score_batch(batch: dict[str, np.ndarray], *, app: str, label: str, prompt_column: str = "prompt"
                ) -> dict[str, Any]:
    """A Ray Data batch function: ``reward``, ``reward_flag`` and ``reward_model`` of each (prompt, response)."""
    rows = reward_scores(app, list(batch[prompt_column]), list(batch["response"]))
    out: dict[str, Any] = dict(batch)
    out["reward"] = np.array([r["reward"] for r in rows], dtype=np.float64)
    out["reward_flag"] = np.array([r["reward_flag"] for r in rows], dtype=object)
    out["reward_model"] = np.array([label] * len(rows), dtype=object)
    return out
