"""The scores stage's figures, from per-task sums: mean score, flagged rows, mean length, score~length correlation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from alma_ray.stages.score import Score, score_tally


def _figures(*tables: pa.Table, rows: int) -> dict:
    return Score.figures(None, [score_tally(t) for t in tables], rows)  # type: ignore[arg-type]


def test_figures_are_summed_over_write_tasks_and_flagged_rows_left_out() -> None:
    responses = ["a", "abcd", "ab", "abcdefgh", "", "abc"]
    scores = [2.0, 5.0, 3.0, 9.0, 0.0, 1.0]
    flags = ["", "", "", "", "empty_response", ""]
    table = pa.table({"response": responses, "score": scores, "judge_flag": flags})
    got = _figures(table.slice(0, 3), table.slice(3), rows=6)  # two write tasks
    kept = [i for i, f in enumerate(flags) if not f]
    s, c = np.array(scores)[kept], np.array([len(responses[i]) for i in kept], dtype=float)
    assert got["flagged"] == 1 and got["mean_score"] == pytest.approx(s.mean())
    assert got["mean_chars"] == pytest.approx(c.mean())
    assert got["score_length_corr"] == pytest.approx(np.corrcoef(s, c)[0, 1], abs=1e-4)
    assert got["score_length_slope"] == pytest.approx(np.polyfit(c, s, 1)[0])  # what length control takes out
    same = pa.table({"response": ["ab", "cd"], "score": [1.0, 4.0], "judge_flag": ["", ""]})
    assert _figures(same, rows=2)["score_length_corr"] is None  # every response as long: no correlation
    assert _figures(same, rows=2)["score_length_slope"] == 0.0
    assert _figures(same.slice(0, 0), rows=0) == {"mean_score": None, "flagged": 0, "mean_chars": None,
                                                   "score_length_corr": None, "score_length_slope": None}
