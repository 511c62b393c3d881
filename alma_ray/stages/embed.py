"""Prompt embeddings from the base model's hidden states, in a Ray Data actor pool.

ALMA embeds every prompt with the base LLM and clusters the embeddings. ``Embedder`` runs the transformers
backbone (no LM head) and pools one hidden-state layer: by default the mean over the prompt's tokens of the last
layer. vLLM's pooling runner exposes only the final layer, so a configurable layer needs transformers (the two
have not been timed against each other: docs/prompts.md). Vectors are L2-normalized, so inner product is
cosine similarity for k-means and the diversity metrics.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ray.data import ActorPoolStrategy, Dataset

from alma_ray.config import Config, EmbeddingConfig


class Embedder:
    """Ray Data actor: ``prompt`` -> ``embedding`` (float32, unit length), other columns passed through."""

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


def embed_prompts(prompts: Dataset, config: Config, *, model: str) -> Dataset:
    """Add an ``embedding`` column to every row of ``prompts`` (one actor pool of the base model)."""
    res = config.resources
    return prompts.map_batches(
        Embedder, fn_constructor_kwargs=dict(model=model, cfg=config.synthesis.embedding, use_gpu=res.use_gpu),
        batch_size=config.synthesis.embedding.batch_size, compute=ActorPoolStrategy(size=res.engines_per_checkpoint),
        num_gpus=1 if res.use_gpu else 0, num_cpus=1 if res.use_gpu else res.cpus_per_engine,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(res.cpus_per_engine))),
                                  "TOKENIZERS_PARALLELISM": "false"}})
