"""Rule scorers: (prompt, response) scored by named, deterministic rules (``RuleConfig``), with no model.

A rule scorer is served the way an LLM judge is (a deployment of the judge app, ``alma_ray.judge.serve``), so it
can be the run's judge, an ensemble member weighted with LLM judges, an evaluation judge, or a reward. Each rule
set gives a value in [0, 1]:

- ``ifbench``: the fraction of the row's verifiable instructions followed (``alma_ray.judge.ifbench``);
- ``max_chars`` / ``min_chars``: 1 inside the bound, ``bound / length`` (``length / bound``) outside it, so that
  a shorter (longer) answer always scores at least as well;
- ``contains`` / ``excludes``: a regular expression present / absent (1 or 0);
- ``ends_sentence``: the response ends a sentence (1 or 0);

and the score is their mean times 10 (the LLM judges' 0-10 scale), or 10 minus that with ``invert``. Rows carry
the rule set's label (``rules-v1(max_chars=40)``) as their judge: rule-based, with the rules' version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from alma_ray.config import RuleConfig

VERSION = "1"
"""Bump when a rule's arithmetic changes: it is part of every label."""
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


def label(rules: RuleConfig) -> str:
    """What a rule scorer's rows call it: ``rules-v<VERSION>(<rule>=<value>,...)``."""
    parts = [f"ifbench={rules.ifbench}@{_ifbench_version()}"] if rules.ifbench else []
    parts += [k if v is True else f"{k}={v}" for k, v in rules.rules.items()]
    return f"rules-v{VERSION}(" + ",".join(parts + (["invert"] if rules.invert else [])) + ")"


def _ifbench_version() -> str:
    from alma_ray.judge import ifbench

    return ifbench.version()


class RuleScorer:
    """Scores pairs by ``rules``; the result of each is the shape an LLM judge replica returns."""

    def __init__(self, rules: RuleConfig) -> None:
        self.rules = rules
        self.contains = re.compile(rules.contains) if rules.contains is not None else None
        self.excludes = re.compile(rules.excludes) if rules.excludes is not None else None

    def values(self, prompt: str, response: str, instructions: Any = None) -> dict[str, float]:
        """Each rule's value in [0, 1] for one pair; raises ``ValueError`` when a rule cannot score it."""
        r, n = self.rules, len(response)
        out: dict[str, float] = {}
        if r.ifbench is not None:
            from alma_ray.judge import ifbench

            listed = ifbench.parse(instructions)
            if not listed:
                raise ValueError("no instructions: the prompt carries none to check")
            unknown = sorted({i["id"] for i in listed} - ifbench.supported())
            if unknown:
                raise ValueError(f"instructions not checkable offline: {', '.join(unknown)}")
            followed = ifbench.follows(prompt, response, listed, loose=r.ifbench == "loose")
            out["ifbench"] = sum(followed) / len(followed)
        if r.max_chars is not None:
            out["max_chars"] = 1.0 if n <= r.max_chars else r.max_chars / n
        if r.min_chars is not None:
            out["min_chars"] = 1.0 if n >= r.min_chars else n / r.min_chars
        if self.contains is not None:
            out["contains"] = float(self.contains.search(response) is not None)
        if self.excludes is not None:
            out["excludes"] = float(self.excludes.search(response) is None)
        if r.ends_sentence:
            out["ends_sentence"] = float(SENTENCE_END.search(response) is not None)
        return out

    def score(self, prompts: Sequence[Any], responses: Sequence[Any],
              instructions: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """One result per pair: ``score`` (0-10), ``score_int``, a one-hot ``score_dist`` (a rule is certain),
        ``score_mass`` 1 and ``judge_flag``: "" or why it is not scored, as the LLM judges say it (``empty_response``,
        ``not_text``) or ``rules: ...`` (no instructions to check, or none checkable offline)."""
        out = []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            flag = "not_text" if not isinstance(prompt, str) or not isinstance(response, str) else \
                "empty_response" if not response.strip() else ""  # as the LLM judges flag them
            try:
                values = {} if flag else self.values(prompt, response,
                                                     instructions[i] if instructions is not None else None)
            except ValueError as e:
                flag = f"rules: {e}"
            if flag:
                out.append({"score": float("nan"), "score_int": -1, "score_dist": [float("nan")] * 11,
                            "score_mass": float("nan"), "judge_flag": flag})
                continue
            score = 10.0 * sum(values.values()) / len(values)
            score = 10.0 - score if self.rules.invert else score
            k = int(round(score))
            out.append({"score": score, "score_int": k, "score_dist": [float(j == k) for j in range(11)],
                        "score_mass": 1.0, "judge_flag": ""})
        return out
