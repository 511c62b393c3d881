"""ROUGE-L near-duplicate search without comparing every pair (ALMoST's prompt filter: reject a prompt whose ROUGE-L
F against any seed or accepted prompt is at or above a threshold, 0.5).

ROUGE-L F of texts of m and n tokens with a longest common subsequence of L tokens is 2L / (m + n) (``rouge-score``
computes it; its tokenizer is used everywhere here). F >= theta needs L >= theta (m + n) / 2, and the two texts share at
least L tokens counted with multiplicity. ``RougeIndex`` finds every text that could reach the threshold with a prefix
filter (as set-similarity joins do): tokens are tagged with their occurrence number (so a multiset overlap is a set
overlap) and ordered by a fixed global order (rarest in the index's reference texts first); a text x needs an overlap of
at least t_x = ceil(theta |x| / (2 - theta)) with any partner (whose length lies between |x| theta / (2 - theta) and |x|
(2 - theta) / theta), so two texts that can reach the threshold share a token among the first |x| - t_x + 1 of each
(their first common token in the global order). Only the texts sharing a prefix token (and within the length bounds) are
scored with ROUGE-L. **Nothing is missed**: the filter drops only pairs whose ROUGE-L F is provably below the threshold;
the test checks it against the all-pairs answer.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable

from rouge_score import rouge_scorer, tokenizers

_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)


def tokens(text: str) -> list[str]:
    """``rouge-score``'s tokens (lower-cased alphanumeric words)."""
    return _TOKENIZER.tokenize(text)  # type: ignore[no-any-return]


class RougeIndex:
    """Texts added so far, searchable for any with ROUGE-L F >= ``threshold`` against a new text."""

    def __init__(self, threshold: float, reference: Iterable[str] = ()) -> None:
        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        reference = list(reference)
        self.df = Counter(t for text in reference for t in set(tokens(text)))
        """The global order: document frequency in the reference texts (fixed: a token new to them is rarest)."""
        self.texts: list[str] = []
        self.lengths: list[int] = []
        self.postings: dict[tuple[str, int], list[int]] = defaultdict(list)
        self.scored = 0
        """ROUGE-L computations made (the work the prefix filter leaves)."""

    def _prefix(self, toks: list[str]) -> list[tuple[str, int]]:
        seen: Counter[str] = Counter()
        tagged = []
        for t in toks:
            tagged.append((t, seen[t]))
            seen[t] += 1
        tagged.sort(key=lambda x: (self.df.get(x[0], 0), x[0], x[1]))
        theta = self.threshold
        need = math.ceil(theta * len(toks) / (2 - theta) - 1e-9)
        return tagged[: len(toks) - max(need, 1) + 1]

    def nearest(self, text: str) -> tuple[float, int | None]:
        """(the highest ROUGE-L F at or above the threshold against an indexed text, its index), or (0.0, None)."""
        toks = tokens(text)
        if not toks:
            return 0.0, None
        theta, m = self.threshold, len(toks)
        lo, hi = m * theta / (2 - theta), m * (2 - theta) / theta
        candidates = {i for key in self._prefix(toks) for i in self.postings.get(key, ())}
        best, where = 0.0, None
        for i in sorted(candidates):
            if not lo - 1e-9 <= self.lengths[i] <= hi + 1e-9:
                continue
            self.scored += 1
            f = self.scorer.score(self.texts[i], text)["rougeL"].fmeasure
            if f >= theta and f > best:
                best, where = f, i
        return best, where

    def add(self, text: str) -> None:
        toks = tokens(text)
        i = len(self.texts)
        self.texts.append(text)
        self.lengths.append(len(toks))
        for key in self._prefix(toks):
            self.postings[key].append(i)
