"""The sampling engine takes new weights in place: the same vLLM engine, the updated model's log-probs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from alma_ray.config import EngineConfig


@pytest.mark.engine
def test_a_live_engine_takes_new_weights_in_place(tiny_model: str, tmp_path: Path) -> None:
    """After ``reload_weights`` the engine's log-probs of a fixed sequence are the updated model's (transformers
    on the saved folder, to 1e-3), not the old ones, from the same ``vllm.LLM`` object."""
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams, TokensPrompt

    from alma_ray.engines.sampler import SamplingEngine

    updated = tmp_path / "updated"
    shutil.copytree(tiny_model, updated)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # a policy update, larger than float noise
    model.save_pretrained(updated)
    ids = [1, 17, 42, 99, 5, 23, 64, 8]

    def reference(folder: str | Path) -> np.ndarray:
        m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0].log_softmax(-1)
        return np.array([logits[i - 1, t].item() for i, t in enumerate(ids) if i])

    def served(engine: SamplingEngine) -> np.ndarray:
        (out,) = engine.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                     SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                                     use_tqdm=False)
        return np.array([lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:])])

    engine = SamplingEngine(tiny_model, engine=EngineConfig(max_model_len=128, dtype="float32"), use_gpu=False)
    llm = engine.llm
    before = served(engine)
    np.testing.assert_allclose(before, reference(tiny_model), atol=1e-3)
    seconds = engine.reload_weights(str(updated))
    after = served(engine)
    np.testing.assert_allclose(after, reference(updated), atol=1e-3)
    assert np.abs(after - before).max() > 0.05  # the weights moved, not only the label
    assert engine.llm is llm and engine.holds() == str(updated) and seconds >= 0
    engine.unload()
