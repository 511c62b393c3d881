"""Rule scorers without Ray: each rule's arithmetic, IFBench's checkers offline (strict and loose), flags, and
the config's refusals. The served path (the judge app, HTTP, an ensemble with LLM judges) is in test_serve."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from alma_ray.config import JudgeConfig, JudgeMember, RuleConfig
from alma_ray.judge import ifbench
from alma_ray.judge.rules import RuleScorer, label

KEYWORDS = [{"id": "count:keywords_multiple", "kwargs": {  # IFBench's test prompt 0: once, twice, 3, 5, 7 times
    "keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper", "keyword4": "labyrinth",
    "keyword5": "paradox"}}]
FOLLOWED = " ".join(["kaleidoscope"] + ["nebula"] * 2 + ["whisper"] * 3 + ["labyrinth"] * 5 + ["paradox"] * 7)


def scores(rules: RuleConfig, responses: list, instructions: list | None = None) -> list[float]:
    return [r["score"] for r in RuleScorer(rules).score(["a prompt"] * len(responses), responses, instructions)]


def test_length_rules_are_graded_so_that_shorter_or_longer_always_scores_at_least_as_well() -> None:
    assert scores(RuleConfig(max_chars=10), ["a" * 5, "a" * 10, "a" * 20, "a" * 40]) == [10.0, 10.0, 5.0, 2.5]
    assert scores(RuleConfig(min_chars=10), ["a" * 5, "a" * 10, "a" * 40]) == [5.0, 10.0, 10.0]
    inverted = scores(RuleConfig(max_chars=10, invert=True), ["a" * 5, "a" * 20, "a" * 40])
    assert inverted == [0.0, 5.0, 7.5]  # the opposite preference: longer is better


def test_property_rules_and_their_mean() -> None:
    assert scores(RuleConfig(contains=r"\bcat\b"), ["a cat sat", "concatenate"]) == [10.0, 0.0]
    assert scores(RuleConfig(excludes="sorry"), ["I am sorry", "Here it is"]) == [0.0, 10.0]
    assert scores(RuleConfig(ends_sentence=True), ["Done.", "Really?\"", "and then"]) == [10.0, 10.0, 0.0]
    both = RuleScorer(RuleConfig(contains="cat", max_chars=10))
    (row,) = both.score(["p"], ["a cat sat on the mat"])  # contains: 1; 20 chars: 0.5 -> mean 0.75
    assert row["score"] == 7.5 and row["score_int"] == 8 and row["score_dist"][8] == 1.0 and row["score_mass"] == 1


def test_ifbench_scores_the_fraction_followed_strict_and_loose() -> None:
    both = KEYWORDS + [{"id": "count:keywords_multiple", "kwargs": {
        "keyword1": "a", "keyword2": "b", "keyword3": "c", "keyword4": "d", "keyword5": "e"}}]
    strict, loose = RuleConfig(ifbench="strict"), RuleConfig(ifbench="loose")
    preamble = "Sure, a paradox:\n" + FOLLOWED  # one "paradox" too many, in a first line the loose test drops
    assert scores(strict, [FOLLOWED, "nebula", preamble], [KEYWORDS] * 3) == [10.0, 0.0, 0.0]
    assert scores(loose, [FOLLOWED, "nebula", preamble], [KEYWORDS] * 3) == [10.0, 0.0, 10.0]
    assert scores(strict, [FOLLOWED], [both]) == [5.0]  # one of two followed
    import json
    assert scores(strict, [FOLLOWED], [json.dumps(KEYWORDS)]) == [10.0]  # a column of JSON text reads the same


def test_rows_the_rules_cannot_score_are_flagged_never_scored() -> None:
    rows = RuleScorer(RuleConfig(ifbench="strict")).score(
        ["p"] * 5, [FOLLOWED, FOLLOWED, "", None, FOLLOWED],
        [None, [{"id": "words:start_verb", "kwargs": {}}], KEYWORDS, KEYWORDS, [{"kwargs": {}}]])
    flags = [r["judge_flag"] for r in rows]
    assert flags[0] == "rules: no instructions: the prompt carries none to check"
    assert flags[1] == "rules: instructions not checkable offline: words:start_verb"  # needs NLTK's tagger data
    assert flags[2:4] == ["empty_response", "not_text"]  # as the LLM judges flag them
    assert flags[4].startswith("rules: an instruction is")
    assert all(math.isnan(r["score"]) for r in rows)


def test_ifbench_prompts_offline_and_the_checkable_instructions() -> None:
    supported = ifbench.supported()
    assert "count:keywords_multiple" in supported and "words:start_verb" not in supported
    everything = ifbench.prompts(only_supported=False)
    usable = ifbench.prompts()
    assert len(everything) == 294 and 200 < len(usable) < 294
    assert all(i["id"] in supported for row in usable for i in row["instructions"])
    from alma_ray.seeds import IFBENCH_HELDOUT, ifbench_heldout_keys, load_seeds

    held = {r["prompt"].strip() for r in everything if r["key"] in ifbench_heldout_keys()}
    seeds = load_seeds(["embedded:ifbench"]).prompts
    assert len(held) == IFBENCH_HELDOUT and not held & set(seeds)  # the evaluation's prompts are never seeds
    assert len(ifbench.eval_prompts(58)) == 58 and {r["key"] for r in ifbench.eval_prompts(4)} <= ifbench_heldout_keys()


def test_labels_say_rule_based_with_the_version() -> None:
    assert label(RuleConfig(max_chars=40, ends_sentence=True, invert=True)) == \
        "rules-v1(max_chars=40,ends_sentence,invert)"
    assert label(RuleConfig(ifbench="loose")) == f"rules-v1(ifbench=loose@{ifbench.version()})"


@pytest.mark.parametrize(("section", "error"), [
    (lambda: RuleConfig(), "needs at least one rule"),
    (lambda: RuleConfig(contains="(unclosed"), "is not a regular expression"),
    (lambda: JudgeMember(name="x"), "exactly one of model"),
    (lambda: JudgeMember(name="x", model="m", rules={"max_chars": 3}), "exactly one of model"),
    (lambda: JudgeConfig(), "exactly one of judge.model"),
    (lambda: JudgeConfig(rules={"max_chars": 3}, build={}), "judge.build fine-tunes judge.model"),
])
def test_a_rule_judge_config_that_cannot_work_is_refused(section, error: str) -> None:
    with pytest.raises(ValidationError, match=error.replace("(", r"\(")):
        section()
