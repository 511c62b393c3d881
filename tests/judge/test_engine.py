"""The judge's vLLM engine against a direct transformers computation of the same probabilities."""

import math

import numpy as np
import pytest

from alma_ray.config import EngineConfig
from alma_ray.judge.engine import Judge
from alma_ray.judge.rubric import RATING_PREFIX, SCORES, score_distribution


@pytest.mark.engine
def test_vllm_scores_match_transformers(tiny_model: str) -> None:
    """The judge's real-valued score equals a direct transformers computation of the same probabilities."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = Judge(tiny_model, name="tiny", version="t", chat=None, max_response_chars=4000,
                  engine=EngineConfig(max_model_len=1024, dtype="float32"), use_gpu=False)
    prompts = ["Explain the water cycle.", "Write a haiku about rain.", "What is 2+2?"]
    responses = ["Water evaporates, condenses and falls as rain.", "Rain on the roof", ""]
    out = judge({"prompt": np.array(prompts), "response": np.array(responses)})
    assert list(out["judge_flag"]) == ["", "", "empty_response"] and math.isnan(out["score"][2])

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tokens = judge.tokens
    for i in range(2):
        ids = judge.prompt_ids(prompts[i], responses[i])
        with torch.no_grad():
            lp1 = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            lp2 = torch.log_softmax(model(torch.tensor([ids + [tokens.digits[1]]])).logits[0, -1].double(), -1)
        wanted = tokens.digits + ([tokens.ten] if tokens.ten is not None else [])
        dist, _ = score_distribution({t: float(lp1[t]) for t in wanted}, {t: float(lp2[t]) for t in wanted},
                                     tokens)
        np.testing.assert_allclose(out["score_dist"][i], dist, atol=1e-4)
        assert abs(out["score"][i] - float(dist @ SCORES)) < 1e-4
        assert tok.decode(ids).endswith(RATING_PREFIX)  # the prompt ends at the rating slot
