"""The two embedding backends compute the same vectors: vLLM's pooling runner and the transformers backbone."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from alma_ray.config import EmbeddingConfig, EngineConfig

PROMPTS = ["Write a haiku about autumn.", "Explain photosynthesis to a ten year old in three sentences.",
           "List three uses of a paperclip. " * 40]  # the last one is cut at max_tokens


@pytest.mark.engine
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_vllm_pooling_matches_transformers(tiny_model: str, pooling: str) -> None:
    from alma_ray.stages.embed import Embedder, VLLMEmbedder

    batch = {"prompt": np.array(PROMPTS, dtype=object), "prompt_id": np.array(["a", "b", "c"])}
    hf = Embedder(tiny_model, cfg=EmbeddingConfig(backend="transformers", pooling=pooling, max_tokens=32),
                  use_gpu=False)(batch)
    embedder = VLLMEmbedder(tiny_model, cfg=EmbeddingConfig(pooling=pooling, max_tokens=32),
                            engine=EngineConfig(max_model_len=256, dtype="float32"), use_gpu=False)
    vl = embedder(batch)
    del embedder
    gc.collect()
    assert list(vl["prompt_id"]) == ["a", "b", "c"]  # other columns pass through
    assert vl["embedding"].dtype == np.float32 and vl["embedding"].shape == hf["embedding"].shape
    np.testing.assert_allclose(np.linalg.norm(vl["embedding"], axis=1), 1.0, atol=1e-5)
    cosine = (vl["embedding"] * hf["embedding"]).sum(axis=1)
    assert cosine.min() > 0.9999, cosine
    assert (vl["embedding"][0] @ vl["embedding"][1]) < 0.9999  # different prompts, different vectors


def test_an_intermediate_layer_needs_transformers() -> None:
    with pytest.raises(ValueError, match="layer=-2 needs synthesis.embedding.backend=transformers"):
        EmbeddingConfig(layer=-2)
    assert EmbeddingConfig(backend="transformers", layer=-2).layer == -2
