import math

import numpy as np
import pytest

from alma_ray.config import EngineConfig
from alma_ray.stages.judge import RATING_PREFIX, SCORES, ScoreTokens, score_distribution

TOKENS = ScoreTokens(digits=list(range(100, 110)), ten=None)


def _lp(probs: dict[int, float]) -> dict[int, float]:
    return {t: math.log(p) for t, p in probs.items()}


def test_ten_is_read_from_two_positions() -> None:
    # p("1") = 0.5, then "0" follows with 0.6, another digit with 0.1: P(10)=0.3, P(1)=0.5*0.3=0.15
    first = _lp({100 + d: (0.5 if d == 1 else 0.5 / 9) for d in range(10)})
    after = _lp({100 + d: (0.6 if d == 0 else 0.1 / 9) for d in range(10)})
    dist, mass = score_distribution(first, after, TOKENS)
    expected = np.array([0.5 / 9, 0.15] + [0.5 / 9] * 8 + [0.3])
    assert mass == pytest.approx(expected.sum())
    np.testing.assert_allclose(dist, expected / expected.sum(), rtol=1e-12)
    assert float(dist @ SCORES) == pytest.approx(float(expected @ SCORES / expected.sum()))


def test_single_ten_token_adds_to_ten() -> None:
    tokens = ScoreTokens(digits=list(range(100, 110)), ten=200)
    first = _lp({**{100 + d: 0.05 for d in range(10)}, 200: 0.5})
    after = _lp({100 + d: 1e-9 for d in range(10)})
    dist, _ = score_distribution(first, after, tokens)
    assert dist.argmax() == 10 and dist[10] == pytest.approx(0.5 / 1.0, rel=1e-6)


def test_score_tokens_from_real_tokenizers(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tokens = ScoreTokens.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model))
    assert len(set(tokens.digits)) == 10


def test_vllm_scores_match_transformers(tiny_model: str) -> None:
    """The judge's real-valued score equals a direct transformers computation of the same probabilities."""
    import torch
    from transformers import AutoModelForCausalLM

    from alma_ray.stages.judge import Judge

    judge = Judge(tiny_model, name="tiny", version="t", chat=None, max_response_chars=4000,
                  engine=EngineConfig(max_model_len=1024, dtype="float32"), use_gpu=False)
    prompts = ["Explain the water cycle.", "Write a haiku about rain.", "What is 2+2?"]
    responses = ["Water evaporates, condenses and falls as rain.", "Rain on the roof", ""]
    out = judge({"prompt": np.array(prompts), "response": np.array(responses)})
    assert list(out["judge_flag"]) == ["", "", "empty_response"] and math.isnan(out["score"][2])

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
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
        assert RATING_PREFIX  # the prompt ends at the rating slot
