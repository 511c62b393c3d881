"""SFT through the real loop (Ray Train, 2 workers, DeepSpeed, gloo): ZeRO-2 and ZeRO-3 train the same model,
the responses become more likely, and the saved folder gives the same log-probs in transformers and vLLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alma_ray.config import AlmaConfig, EngineConfig
from alma_ray.train.loop import fit
from alma_ray.train.objectives import SFT

WORDS = ["rain", "sea", "moon", "tree", "stone", "bird", "fire", "snow"]
TEMPLATE = "User: {prompt}\nAssistant:"


def _config(model: str, zero_stage: int) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, judge={"model": model}, generation={"checkpoints": [{"name": "a", "model": model}]},
        train={"micro_batch": 2, "max_seq_len": 64, "lr": 1e-3, "epochs": 3, "zero_stage": zero_stage,
               "report_every": 2},
        resources={"train_workers": 2}))


def _response_logprobs(model_dir: str, rows: list[dict[str, str]]) -> np.ndarray:
    """Summed log-prob of each response given its prompt, computed directly with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alma_ray.train.data import encode_example
    from alma_ray.train.losses import sequence_logprobs

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for row in rows:
        ids, labels = encode_example(tok, row["prompt"], row["response"], max_seq_len=64,
                                     completion_template=TEMPLATE)
        with torch.no_grad():
            logits = model(torch.as_tensor(ids)[None]).logits
        out.append(float(sequence_logprobs(logits, torch.as_tensor(labels)[None])[0]))
    return np.array(out)


@pytest.mark.usefixtures("ray_local")
def test_zero2_and_zero3_agree_and_the_model_reloads_in_vllm(tiny_model: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams, TokensPrompt

    from alma_ray.engines.build import build_llm

    rows = [{"prompt": f"say {w}", "response": f"{w} {w} {w}"} for w in WORDS]
    configs = {stage: _config(tiny_model, stage) for stage in (2, 3)}
    # rows as one table: each rank takes rows rank::world, the same in both runs (a streamed split may hand the
    # ranks other rows from run to run, and the two curves then differ from the first step)
    runs = {stage: fit(pa.Table.from_pylist(rows), SFT(TEMPLATE), train=c.train, resources=c.resources,
                       model=tiny_model, out_dir=tmp_path / f"zero{stage}" / "sft", seed=0)
            for stage, c in configs.items()}
    assert runs[2]["steps"] == runs[3]["steps"] == 3 * len(rows) // (2 * 2)
    np.testing.assert_allclose(runs[2]["losses"], runs[3]["losses"], rtol=1e-4)

    trained = str(tmp_path / "zero3" / "sft")
    before, after = _response_logprobs(tiny_model, rows), _response_logprobs(trained, rows)
    assert (after > before).all(), (before, after)

    # The ZeRO-3 gathered folder: the same prompt log-probs in transformers and in vLLM (within 1e-3).
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(trained).encode("User: say moon\nAssistant: moon moon moon")
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    expected = np.array([float(logp[i - 1, ids[i]]) for i in range(1, len(ids))])
    llm = build_llm(trained, EngineConfig(max_model_len=256, dtype="float32"), use_gpu=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    assert out.prompt_logprobs is not None
    got = np.array([entry[ids[i]].logprob for i, entry in enumerate(out.prompt_logprobs) if i > 0 and entry])
    np.testing.assert_allclose(got, expected, atol=1e-3)
