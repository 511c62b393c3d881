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
