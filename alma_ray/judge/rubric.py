"""The judge's rubric and score-token arithmetic (ALMA's judge), pure: no vLLM, so training imports it too.

The judge sees ALMA's rubric and answers ``Rating: [[s]]``. Instead of sampling ``s`` we read p(s) for
s = 0..10 at the rating position and score = sum_s p(s) * s. Tokenizers split "10" into "1" + "0", so p(10) and
p(1) need a second position: p(10) = p("1") * p("0" | "1") and p(1) = p("1") * p(no further digit | "1"); a
tokenizer with a single "10" token adds that token's probability to p(10). Both positions are scored in one
vLLM call (``logprob_token_ids``: exact log-probs of just those tokens, no top-k truncation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alma_ray.engines.build import format_prompt

JUDGE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the response provided by an \
AI assistant to the user prompt displayed below. Your evaluation should consider factors such as the \
helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Rate the response on \
a scale of 0 to 10, where:
0: Unusable. The response is empty, nonsensical, or unrelated to the prompt.
1: Very poor. Barely addresses the prompt; mostly wrong or incoherent.
2: Poor. Addresses the prompt but with major errors or omissions.
3: Weak. Partly helpful; significant problems with accuracy or relevance.
4: Below average. Some useful content, but clearly incomplete or flawed.
5: Average. Adequate answer with noticeable gaps or minor errors.
6: Above average. Helpful and mostly accurate, lacking depth or polish.
7: Good. Accurate, relevant and clear, with small room for improvement.
8: Very good. Thorough, accurate and well organized.
9: Excellent. Insightful, complete and precise; hard to improve.
10: Outstanding. The best possible response to this prompt.
Output your rating strictly in this format: "[[rating]]", for example: "Rating: [[5]]".

# Prompt:
{prompt}

# Response:
{response}"""
RATING_PREFIX = "Rating: [["
SCORES = np.arange(11, dtype=np.float64)


@dataclass(frozen=True)
class ScoreTokens:
    """The judge tokenizer's ids for the digits after ``RATING_PREFIX`` (and a single "10" token, if any)."""

    digits: list[int]
    ten: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ScoreTokens:
        base = tokenizer.encode(RATING_PREFIX, add_special_tokens=False)

        def suffix(text: str) -> list[int]:
            ids = tokenizer.encode(RATING_PREFIX + text, add_special_tokens=False)
            if ids[: len(base)] != base:
                raise ValueError(f"judge tokenizer merges '{text}' into '{RATING_PREFIX}'; "
                                 "choose a rating prefix that ends on a token boundary")
            return ids[len(base):]

        digits = []
        for d in range(10):
            ids = suffix(str(d))
            if len(ids) != 1:
                raise ValueError(f"judge tokenizer encodes the digit {d} as {len(ids)} tokens; need exactly one")
            digits.append(ids[0])
        ten = suffix("10")
        if ten == [digits[1], digits[0]]:
            return cls(digits, None)
        if len(ten) == 1:
            return cls(digits, ten[0])
        raise ValueError(f"judge tokenizer encodes '10' as {ten}: neither one token nor '1' + '0'")


def score_distribution(first: dict[int, float], after_one: dict[int, float], tokens: ScoreTokens
                       ) -> tuple[np.ndarray, float]:
    """The 11-way score distribution from log-probs at the rating position (``first``) and after a "1".

    Returns (probabilities over 0..10 summing to 1, the raw probability mass the judge put on valid scores).
    """
    p = np.array([math.exp(first[t]) for t in tokens.digits], dtype=np.float64)
    q = np.array([math.exp(after_one[t]) for t in tokens.digits], dtype=np.float64)
    p_one = p[1]
    probs = np.zeros(11, dtype=np.float64)
    probs[:10] = p
    probs[1] = p_one * max(0.0, 1.0 - q.sum())  # "1" then the rating closes
    probs[10] = p_one * q[0] + (math.exp(first[tokens.ten]) if tokens.ten is not None else 0.0)
    mass = float(probs.sum())
    return (probs / mass if mass > 0 else np.full(11, 1 / 11)), mass


def judge_prompt_ids(tokenizer: Any, prompt: str, response: str, *, chat: bool) -> list[int]:
    """Token ids of the judge's input for one (prompt, response), ending right before the rating digits."""
    text = format_prompt(tokenizer, JUDGE_TEMPLATE.format(prompt=prompt, response=response), chat=chat,
                         completion_template="{prompt}\n")
    return tokenizer.encode(text + RATING_PREFIX, add_special_tokens=not chat)  # type: ignore[no-any-return]


FLAGS = ("empty_response", "not_text", "too_long")
"""Why a row has no score: nothing to judge, a response that is not a string, or more tokens than the context."""
