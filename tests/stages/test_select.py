"""Best-of-N: the highest valid score per prompt, ties broken the same way on every rerun, flagged rows never
chosen; on the small path (one task) and through a hash shuffle with several partitions (a large round's path)."""

from __future__ import annotations

import math

import pytest

from alma_ray.stages.base import shuffle_partitions
from alma_ray.stages.select import select_best


def _scored() -> list[dict]:
    rows = []
    for p, scores in {"p1": [3.0, 7.5, 7.5], "p2": [9.0, 1.0, 2.0], "p3": [math.nan, 4.0, 0.5]}.items():
        for i, s in enumerate(scores):
            rows.append({"prompt_id": p, "checkpoint": "b" if i == 2 else "a", "sample_index": i, "score": s,
                         "judge_flag": "empty_response" if math.isnan(s) else "", "response": f"{p}-{i}"})
    return rows


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("path", ["small", "shuffled"])
def test_best_of_n_per_prompt(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data

    from alma_ray.stages import select

    if path == "shuffled":
        monkeypatch.setattr(select, "SMALL_ROWS", 0)
        monkeypatch.setattr(select, "shuffle_partitions", lambda rows: 3)
    best = select_best(ray.data.from_items(_scored(), override_num_blocks=3), expected_rows=9).to_pandas()
    best = best.set_index("prompt_id").sort_index()
    assert list(best.response) == ["p1-1", "p2-0", "p3-1"]  # p1: tie 7.5 -> checkpoint a before b
    assert list(best.n_candidates) == [3, 3, 2]  # the flagged row of p3 is not a candidate
    assert best.loc["p2", "mean_score"] == pytest.approx(4.0)


def test_shuffle_partitions_grow_with_rows_but_stay_bounded() -> None:
    assert shuffle_partitions(10) == 1 and shuffle_partitions(2_000_000) == 10
    assert shuffle_partitions(10**12) == 1024


def test_dpo_pairs_are_the_best_against_a_random_other_or_the_worst() -> None:
    import pandas as pd

    from alma_ray.stages.select import _pair

    group = pd.DataFrame({"round": 2, "prompt_id": "p", "cluster_id": 0, "prompt": "q", "judge": "j",
                          "judge_version": "v1", "checkpoint": ["a", "a", "b", "b"], "sample_index": [0, 1, 0, 1],
                          "seed": [1, 2, 3, 4], "response": ["r0", "r1", "r2", "r3"], "score": [5.0, 9.0, 9.0, 1.0]})
    worst = _pair(group, "worst", "s").iloc[0]
    # ties at the top go to the lowest (checkpoint, sample_index): a/1
    assert (worst.chosen, worst.rejected, worst.chosen_checkpoint, worst.chosen_sample_index) == ("r1", "r3", "a", 1)
    assert (worst.chosen_score, worst.rejected_score, worst.n_candidates, worst.mean_score) == (9.0, 1.0, 4, 6.0)
    drawn = {_pair(group, "random", salt).iloc[0].rejected for salt in map(str, range(40))}
    assert drawn == {"r0", "r2", "r3"}  # any other response, never the chosen one
    assert _pair(group, "random", "7").equals(_pair(group, "random", "7"))  # a rerun draws the same
    assert _pair(group.head(1), "random", "s").empty  # one valid response: no pair


def test_length_controlled_selection_takes_the_rounds_length_bias_out() -> None:
    """A judge that adds 0.02 a character to quality: plain best-of-N picks the longest answer, length-controlled
    the best one; the slope is the one the scores stage fits (Score.figures from its write tallies)."""
    import pandas as pd
    import pyarrow as pa

    from alma_ray.stages.score import Score, score_tally
    from alma_ray.stages.select import LengthControl, pick_best

    quality, lengths = [1.0, 3.0, 2.0], [300, 50, 100]
    group = pd.DataFrame({"prompt_id": "p", "checkpoint": "a", "sample_index": range(3), "judge_flag": "",
                          "response": ["x" * n for n in lengths],
                          "score": [q + 0.02 * n for q, n in zip(quality, lengths)]})
    tallies = [score_tally(pa.Table.from_pandas(group))]
    fit = Score.figures(None, tallies, 3)  # type: ignore[arg-type]
    import numpy as np

    assert fit["score_length_slope"] == pytest.approx(np.polyfit(lengths, group.score, 1)[0])  # least squares
    assert pick_best(group)["sample_index"].item() == 0  # plain: the longest
    picked = pick_best(group, LengthControl(0.02, 150.0))
    assert picked["sample_index"].item() == 1 and picked["controlled_score"].item() == pytest.approx(3.0 + 3.0)
    wide = pd.DataFrame({"prompt_id": "p", "checkpoint": "a", "sample_index": range(50), "judge_flag": "",
                         "response": ["x" * n for n in range(10, 510, 10)],
                         "score": [2.0 + 0.5 * n for n in range(10, 510, 10)]})
    exact = Score.figures(None, [score_tally(pa.Table.from_pandas(wide))], 50)  # type: ignore[arg-type]
    assert exact["score_length_slope"] == pytest.approx(0.5) and exact["score_length_corr"] == pytest.approx(1.0)
