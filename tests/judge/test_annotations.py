"""Judge annotations: the synthetic demo set, users' files (errors by file and line), pairs, honest accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alma_ray.judge.annotations import (
    SCORES,
    AnnotationError,
    demo_annotations,
    load_annotations,
    pairwise_accuracy,
    preference_pairs,
    split_by_question,
)


def test_the_demo_set_is_labelled_synthetic_and_split_by_question() -> None:
    rows = demo_annotations()
    assert len({r["question_id"] for r in rows}) >= 25
    assert {r["method"] for r in rows} == set(SCORES)
    assert all(r["source"].startswith("synthetic") and r["score"] == SCORES[r["method"]] for r in rows)
    train, held = split_by_question(rows, 0.25)
    assert not {r["question_id"] for r in train} & {r["question_id"] for r in held}
    pairs = preference_pairs(held)
    assert pairs and all(SCORES[p["chosen_method"]] > SCORES[p["rejected_method"]] for p in pairs)
    assert demo_annotations() == rows  # the same set every time


def test_user_annotations_are_checked_line_by_line(tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    good.write_text('{"prompt": "p", "response": "r", "score": 7}\n{"prompt": "p", "response": "s", "score": 2}\n')
    rows = load_annotations(good)
    assert [r["score"] for r in rows] == [7, 2] and rows[0]["method"] == "human"
    for body, message in [('{"prompt": "p", "response": "r", "score": 11}', "a.jsonl:1: 'score' must be"),
                          ('{"prompt": "p", "score": 3}', "a.jsonl:1: 'response' must be"),
                          ('{"prompt": "p", "response": "r", "score": 3}\n{bad', "a.jsonl:2: not valid JSON"),
                          ('{"prompt": "p", "response": "r", "score": NaN}', "a.jsonl:1: 'score' must be"),
                          ('{"prompt": "p", "response": "r", "score": Infinity}', "a.jsonl:1: 'score' must be"),
                          ("", "a.jsonl: no annotation rows")]:
        good.write_text(body)
        with pytest.raises(AnnotationError, match=message):
            load_annotations(good)
    good.write_bytes(b'{"prompt": "p", "response": "r", "score": 3}\n{"prompt": "\xff", "response": "r", "score": 3}')
    with pytest.raises(AnnotationError, match="a.jsonl:2: not valid UTF-8"):
        load_annotations(good)


def test_ties_and_unscored_pairs_are_not_wins() -> None:
    acc = pairwise_accuracy(np.array([7.0, 5.0, 5.0, np.nan]), np.array([3.0, 5.0, 6.0, 1.0]))
    assert (acc.correct, acc.ties, acc.unscored, acc.pairs) == (1, 1, 1, 4)
    assert acc.accuracy == 0.25 and acc.accuracy_half_ties == 0.375


def test_plausible_wrong_answers_keep_the_form_and_change_the_numbers() -> None:
    import random

    from alma_ray.judge.annotations import wrong_numbers

    text = "David has one brother. The total is 12.50 dollars, paid in 3 parts."
    changed = wrong_numbers(text, random.Random(0))
    assert changed is not None and changed != text
    assert changed.split()[:2] == ["David", "has"] and "brother. The total is" in changed
    assert "12.50" not in changed and " 3 parts" not in changed and "one brother" not in changed
    assert wrong_numbers("No numbers here.", random.Random(0)) is None
    rows = demo_annotations()
    by_method = {(r["question_id"], r["method"]): r["response"] for r in rows}
    wrong = [(q, text) for (q, m), text in by_method.items() if m == "wrong_numbers"]
    assert len(wrong) >= 20  # the packaged questions are maths, reasoning and coding: most answers have numbers
    for q, text in wrong:  # the first reference, with only its numbers changed
        ref = next(r["response"] for r in rows if r["question_id"] == q and r["method"] == "reference")
        assert text != ref and text.split()[0] == ref.split()[0]
    follow = [r for r in rows if r["method"] == "other_turn"]
    assert follow and all(r["response"] not in {x["response"] for x in rows if x["method"] == "reference"}
                          for r in follow)


def test_what_a_judge_sides_with_is_measured() -> None:
    from alma_ray.judge.annotations import LONGER, accuracy_by_kind, accuracy_table, kinds_table, prefers_longer

    chosen, rejected = np.array([7.0, 2.0, 5.0, 6.0]), np.array([3.0, 4.0, 5.0, 1.0])
    chosen_chars, rejected_chars = np.array([100, 10, 50, 40]), np.array([20, 30, 10, 40])
    # ordered pairs with different lengths: 0 (longer scored higher), 1 (the longer, rejected, scored higher); pair
    # 2 ties, pair 3 has equal lengths
    assert prefers_longer(chosen, rejected, chosen_chars, rejected_chars) == 1.0
    assert prefers_longer(np.array([5.0]), np.array([5.0]), np.array([3]), np.array([1])) is None
    assert accuracy_by_kind(chosen > rejected, ["a>b", "a>b", "a>c", "b>c"]) == {"a>b": 0.5, "a>c": 0.0, "b>c": 1.0}
    rows = [{"judge": "sft", "scores": "real-valued", "pairs": 4, "accuracy": 0.5, "ties": 1,
             "accuracy_half_ties": 0.625, "unscored": 0, "prefers_longer": 1.0, "by_kind": {"a>b": 0.5}},
            {"judge": LONGER, "scores": "length", "pairs": 4, "accuracy": 0.25, "ties": 1,
             "accuracy_half_ties": 0.375, "unscored": 0, "prefers_longer": None, "by_kind": {"a>b": 1.0}}]
    assert "| sft | real-valued | 4 | 0.500 | 1 | 0.625 | 1.000 |" in accuracy_table(rows)
    assert "| longer answer | length | 4 | 0.250 | 1 | 0.375 | - |" in accuracy_table(rows)
    assert kinds_table(rows).splitlines()[2] == "| a>b | 0.500 | 1.000 |"
