"""The rubric's score-token arithmetic: p(10) from two positions, a single "10" token, real tokenizers."""

import math

import numpy as np
import pytest

from alma_ray.judge.rubric import SCORES, ScoreTokens, score_distribution

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
