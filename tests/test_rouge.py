"""ROUGE-L search: the prefix filter finds every text an all-pairs scan finds at the threshold (nothing missed),
while scoring far fewer pairs."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from alma_ray.rouge import RougeIndex, tokens


def _texts(n: int, seed: int) -> list[str]:
    """The tiny seed prompts, shuffled, and near copies of them (a few words changed, dropped or added)."""
    from alma_ray.seeds import load_seeds

    real = load_seeds(["embedded:tiny"]).prompts
    words = [w for p in real for w in p.split()]
    rng = random.Random(seed)
    out = rng.sample(real, len(real))
    while len(out) < n:
        base = rng.choice(out).split()
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.4 and len(base) > 2:
                base.pop(rng.randrange(len(base)))
            elif op < 0.7:
                base.insert(rng.randrange(len(base) + 1), rng.choice(words))
            else:
                base[rng.randrange(len(base))] = rng.choice(words)
        out.insert(rng.randrange(len(out) + 1), " ".join(base))
    return out


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_prefix_filter_misses_nothing(threshold: float) -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = _texts(140, seed=int(threshold * 10))
    index = RougeIndex(threshold, reference=texts[:40])
    all_pairs = 0
    for i, text in enumerate(texts):
        scores = [scorer.score(t, text)["rougeL"].fmeasure for t in index.texts]
        all_pairs += len(scores)
        expected = max([s for s in scores if s >= threshold], default=0.0)
        found, where = index.nearest(text)
        assert found == pytest.approx(expected), (i, text)
        assert (where is None) == (expected == 0.0)
        index.add(text)
    if threshold >= 0.5:  # at ALMoST's threshold the filter leaves a fraction of the work
        assert index.scored < all_pairs / 4, (index.scored, all_pairs)


def test_tokens_are_rouge_scores_own() -> None:
    assert tokens("Write a POEM, about the sea!") == ["write", "a", "poem", "about", "the", "sea"]
    assert RougeIndex(0.5).nearest("...") == (0.0, None)
