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
