"""Dedup and the cluster draw on hand-made data, through real Ray Data (hash aggregates and joins)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray.data

from alma_ray.config import DedupConfig
from alma_ray.diversity import distinct_n, mean_pairwise_distance
from alma_ray.ids import prompt_id
from alma_ray.stages.cluster import PoolTooSmallError, size_histogram
from alma_ray.stages.dedup import dedup, dedup_frame, shingles
from alma_ray.stages.draw import draw_prompts

LONG = ("Write a detailed travel itinerary for a three day trip to Kyoto in autumn, including temples, "
        "gardens, local food markets, and a day trip to Nara with budget estimates for each day")


def _rows(texts: list[str], start: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts,
                         "order": np.arange(start, start + len(texts), dtype=np.int64)})


@pytest.mark.usefixtures("ray_local")
def test_exact_and_near_duplicates_are_dropped_against_each_other_and_the_seeds() -> None:
    seed = "Explain the difference between a virus and a bacterium to a ten year old child, with examples"
    candidates = [
        LONG,                                   # 0 kept (first of its near-duplicates)
        "  write a detailed TRAVEL itinerary for a three day trip to kyoto in autumn, including temples, "
        "gardens, local food markets, and a day trip to nara with budget estimates for each day",  # 1 exact of 0
        LONG.replace("three day", "three-day").replace("budget", "rough budget"),  # 2 near of 0
        seed.replace("ten year old", "ten-year-old"),                               # 3 near of the seed
        "Compose a haiku about the first snow falling on a quiet mountain village at night",  # 4 kept
        "List five practical ways to reduce plastic waste in a small office kitchen",        # 5 kept
    ]
    reference = ray.data.from_pandas(_rows([seed], -1))
    result = dedup(ray.data.from_pandas(_rows(candidates, 0)), reference, cfg=DedupConfig(), partitions=1)
    kept = sorted(r["order"] for r in result.unique.take_all())
    assert kept == [0, 4, 5]
    near = {r["order"]: r["of_reference"] for r in result.near.take_all()}
    assert near == {2: False, 3: True}
    # the small path (one task, pandas) finds the same
    unique, near_frame = dedup_frame(_rows(candidates, 0), _rows([seed], -1), cfg=DedupConfig())
    assert sorted(unique["order"]) == kept and dict(zip(near_frame["order"], near_frame["of_reference"])) == near


def test_shingles_and_diversity_metrics() -> None:
    assert shingles("One two", 3) == [b"one two"]
    assert shingles("a b c d", 3) == [b"a b c", b"b c d"]
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b", "c d"], 2) == 1.0
    e = np.eye(3, dtype=np.float32)
    assert mean_pairwise_distance(e) == pytest.approx(1.0)
    assert mean_pairwise_distance(np.stack([e[0], e[0]])) == pytest.approx(0.0)
    assert size_histogram([1, 2, 3, 5], k=6) == {"0": 2, "1": 1, "2-3": 2, "4-7": 1}


@pytest.mark.usefixtures("ray_local")
def test_each_round_draws_distinct_clusters_never_reusing_a_prompt() -> None:
    pool = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(12)], "prompt": [f"prompt {i}" for i in range(12)],
                         "cluster_id": [i % 4 for i in range(12)]})
    used: list[str] = []
    for r in (1, 2, 3):
        ledger = ray.data.from_pandas(pd.DataFrame({"prompt_id": used})) if used else None
        draw = draw_prompts(ray.data.from_pandas(pool), ledger, k=4, seed=0, round_index=r, partitions=1)
        rows = draw.drawn.take_all()
        again = draw_prompts(ray.data.from_pandas(pool), ledger, k=4, seed=0, round_index=r, partitions=1)
        assert sorted(x["prompt_id"] for x in again.drawn.take_all()) == sorted(x["prompt_id"] for x in rows)
        assert sorted(x["cluster_id"] for x in rows) == [0, 1, 2, 3]
        assert not {x["prompt_id"] for x in rows} & set(used)
        assert draw.random.count() == 4 and draw.unused_prompts == 12 - len(used)
        used += [x["prompt_id"] for x in rows]
    with pytest.raises(PoolTooSmallError, match="only 0 clusters still have unused prompts"):
        draw_prompts(ray.data.from_pandas(pool), ray.data.from_pandas(pd.DataFrame({"prompt_id": used})),
                     k=4, seed=0, round_index=4, partitions=1)


@pytest.mark.usefixtures("ray_local")
def test_the_small_path_draws_what_the_shuffled_path_draws() -> None:
    from alma_ray.stages.draw import draw_frame

    pool = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(40)], "prompt": [f"prompt {i}" for i in range(40)],
                         "cluster_id": [i % 10 for i in range(40)]})
    used = {f"p{i}" for i in range(0, 40, 3)}
    ledger = ray.data.from_pandas(pd.DataFrame({"prompt_id": sorted(used)}))
    large = draw_prompts(ray.data.from_items(pool.to_dict("records"), override_num_blocks=4), ledger, k=6, seed=3,
                         round_index=2,
                         partitions=3)  # shuffles and joins with several partitions, as a large pool takes them
    drawn, random, unused, available = draw_frame(pool, used, k=6, seed=3, round_index=2)
    assert sorted(drawn.prompt_id) == sorted(r["prompt_id"] for r in large.drawn.take_all())
    assert sorted(random.prompt_id) == sorted(r["prompt_id"] for r in large.random.take_all())
    assert (unused, available) == (large.unused_prompts, large.clusters_available) == (40 - len(used), 10)
    assert drawn.cluster_id.is_unique and not set(drawn.prompt_id) & used
    with pytest.raises(PoolTooSmallError, match="only 10 clusters"):
        draw_frame(pool, used, k=11, seed=3, round_index=2)
