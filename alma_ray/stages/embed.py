"""Prompt embeddings from the base model's hidden states, in a Ray Data actor pool.

ALMA embeds every prompt with the base LLM and clusters the embeddings. By default a prompt's vector is the mean
over its tokens of the last layer's hidden states (after the final norm). Two actors compute it:

- ``VLLMEmbedder`` (default): vLLM's pooling runner (``runner="pooling"``, the causal LM converted to an
  embedding model), which pools only the last layer. 2.2x the transformers actor's prompts/s on Gemma-270M and
  2 CPUs, with the same vectors (``make bench-embed``, docs/prompts.md).
- ``Embedder``: the transformers backbone (no LM head), which can pool any layer (``embedding.layer``).

Vectors are L2-normalized, so inner product is cosine similarity for k-means and the diversity metrics.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray.data import ActorPoolStrategy, Dataset

from alma_ray.config import EmbeddingConfig, EngineConfig, ResourcesConfig
from alma_ray.engines.build import actor_remote_args, build_llm
from alma_ray.stages.base import Stage
from alma_ray.store import StageOutput


class Embedder:
    """Ray Data actor (transformers): ``prompt`` -> ``embedding`` (float32, unit length), other columns passed
    through."""

    def __init__(self, model: str, *, cfg: EmbeddingConfig, use_gpu: bool) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.device = "cuda" if use_gpu else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if use_gpu else torch.float32
        self.model = AutoModel.from_pretrained(model, dtype=dtype).to(self.device).eval()
        layers = self.model.config.num_hidden_layers
        if not -layers - 1 <= cfg.layer <= layers:
            raise ValueError(f"synthesis.embedding.layer={cfg.layer}: {model} has {layers} layers "
                             f"(use 0..{layers}, or -1 for the last)")
        self.cfg = cfg

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        texts = [str(t) for t in batch["prompt"]]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_tokens,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            states = self.model(**enc, output_hidden_states=True).hidden_states[self.cfg.layer].float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        if self.cfg.pooling == "mean":
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            last = enc["attention_mask"].sum(1) - 1
            pooled = states[torch.arange(len(texts), device=states.device), last]
        vectors = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)
        return {**batch, "embedding": vectors}


class VLLMEmbedder:
    """Ray Data actor (vLLM pooling runner), the same contract as ``Embedder`` for the last layer (the config
    refuses any other layer with this backend)."""

    def __init__(self, model: str, *, cfg: EmbeddingConfig, engine: EngineConfig, use_gpu: bool) -> None:
        from vllm.config import PoolerConfig

        self.llm = build_llm(model, engine, use_gpu=use_gpu, runner="pooling", convert="embed",
                             pooler_config=PoolerConfig(seq_pooling_type="MEAN" if cfg.pooling == "mean" else "LAST",
                                                        use_activation=True))  # activation = L2 normalization
        self.tokenizer = self.llm.get_tokenizer()
        self.max_tokens = min(cfg.max_tokens, engine.max_model_len)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from vllm import TokensPrompt

        ids = [TokensPrompt(prompt_token_ids=self.tokenizer(str(t), truncation=True, max_length=self.max_tokens)
                            .input_ids) for t in batch["prompt"]]
        outputs = self.llm.embed(ids, use_tqdm=False)
        return {**batch, "embedding": np.array([o.outputs.embedding for o in outputs], dtype=np.float32)}


def embed_prompts(prompts: Dataset, *, model: str, cfg: EmbeddingConfig, engine: EngineConfig,
                  resources: ResourcesConfig) -> Dataset:
    """Add an ``embedding`` column to every row of ``prompts`` (one actor pool of the base model)."""
    res = resources
    actor: type[Embedder | VLLMEmbedder]
    if cfg.backend == "vllm":
        actor, kwargs = VLLMEmbedder, dict(model=model, cfg=cfg, engine=engine, use_gpu=res.use_gpu)
        remote = actor_remote_args(engine, use_gpu=res.use_gpu, cpus=res.cpus_per_engine)
    else:
        actor, kwargs = Embedder, dict(model=model, cfg=cfg, use_gpu=res.use_gpu)
        remote = dict(num_gpus=1 if res.use_gpu else 0, num_cpus=1 if res.use_gpu else res.cpus_per_engine,
                      runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(res.cpus_per_engine))),
                                                "TOKENIZERS_PARALLELISM": "false"}})
    return prompts.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=cfg.batch_size,
                               compute=ActorPoolStrategy(size=res.engines_per_checkpoint), **remote)


def embedding_dim(table: Any) -> int | None:
    """The width of the embeddings a write task wrote."""
    from ray.data.block import BlockAccessor

    if not table.num_rows:
        return None
    column = BlockAccessor.for_block(table.slice(0, 1)).to_numpy("embedding")
    return len(column[0])  # type: ignore[index]


@dataclass
class Embed(Stage):
    """Every pool prompt with its base-model embedding."""

    model: str
    """The base model's folder."""
    label: str
    """The base model as configured (recorded in the manifest)."""
    cfg: EmbeddingConfig
    engine: EngineConfig
    resources: ResourcesConfig
    name: str = "embeddings"
    needs: tuple[str, ...] = ("prompt_id", "prompt")
    tally = staticmethod(embedding_dim)
    _started: float = field(default=0.0, repr=False)

    def loads(self) -> list[str]:
        return [self.model]

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return embed_prompts(data, model=self.model, cfg=self.cfg, engine=self.engine, resources=self.resources)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        self._started = time.time()
        return super().write(data, out)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        return {"model": self.label, "dim": tallies[0] if tallies else None,
                "prompts_per_s": rows / (time.time() - self._started), **self.cfg.model_dump()}
