"""``make measure-selection`` on a run directory written here: both rules' picks, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alma_ray.bench.selection import measure


def test_both_rules_picks_are_measured_on_the_same_scores(tmp_path: Path) -> None:
    scores = tmp_path / "round_002" / "scores"
    scores.mkdir(parents=True)
    # a judge that rewards length: 0.02 a character on top of quality (1, 3, 2 at 300, 50, 100 characters)
    rows = pd.DataFrame({"prompt_id": ["p"] * 3 + ["q"] * 3, "checkpoint": "m1a", "sample_index": [0, 1, 2] * 2,
                         "response": ["x" * n for n in (300, 50, 100, 80, 80, 40)],
                         "score": [7.0, 4.0, 4.0, 5.0, 6.0, 1.0], "judge_flag": ["", "", "", "", "", ""]})
    rows.to_parquet(scores / "part-0.parquet")
    (scores / "_MANIFEST.json").write_text(json.dumps({"stats": {"score_length_corr": 0.5,
                                                                  "score_length_slope": 0.02}}))
    got = measure(tmp_path)["rounds"]["round_002"]
    assert got["best_mean_chars"] == (300 + 80) / 2  # p: the longest; q: sample 1
    # length-controlled, less 0.02 x (length - 108.3): p 3.17, 5.17, 4.17 -> sample 1 (50 chars); q 5.57, 6.57, 2.37
    assert got["length_controlled_mean_chars"] == (50 + 80) / 2 and got["same_pick"] == 1
    assert got["slope_per_100_chars"] == pytest.approx(2.0) and got["mean_chars_all"] == pytest.approx(650 / 6, 0.01)
