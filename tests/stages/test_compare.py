"""ALMoST's comparisons against hand-worked examples: the rubric pairing (ties, a missing configuration, each chosen
at most once), the length filter, and the stage end to end on Ray Data (including a grid that yields no pair)."""

from __future__ import annotations

import pandas as pd
import pytest

from alma_ray.errors import EmptyStageError
from alma_ray.stages.compare import Comparisons, compare_prompt, length_dropped, rubric_pairs

TIERS = [["big5"], ["big3", "small5"], ["small3"], ["small1"]]


def test_rubric_pairs_each_configuration_against_the_next_lower_valid_one() -> None:
    # every configuration valid: each is chosen once, against the first valid one of the next tier
    assert rubric_pairs(["big5", "big3", "small5", "small3", "small1"], TIERS) == [
        ("big5", "big3", 0, 1), ("big3", "small3", 1, 2), ("small5", "small3", 1, 2), ("small3", "small1", 2, 3)]
    # big3 failed the filter: big5 falls to small5 (same tier as big3); small3 failed: the tier-1 ones skip to small1
    assert rubric_pairs(["big5", "small5", "small1"], TIERS) == [
        ("big5", "small5", 0, 1), ("small5", "small1", 1, 3)]
    # ties are never compared with each other; the lowest tier is never chosen
    assert rubric_pairs(["big3", "small5"], TIERS) == []
    assert rubric_pairs(["small1"], TIERS) == []


def test_length_filter_hand_worked() -> None:
    lengths = [100, 200, 300]  # mean 200, std 81.65: the cut is 159.2
    assert length_dropped(100, 200, lengths)  # shorter than the rejected and than the cut
    assert not length_dropped(180, 300, lengths)  # shorter than the rejected, but above the cut
    assert not length_dropped(100, 90, [100, 90, 300])  # longer than the rejected: kept however short


def _rows(prompt: str, chars: dict[str, int | None]) -> list[dict]:
    return [{"prompt_id": prompt, "prompt": f"question {prompt}", "source": "mined:test", "config": c,
             "config_model": "base", "aligned": False, "demos": "hhh", "shots": 1, "seed": i,
             "response": "x" * (n or 1), "chars": n or 1, "bad": "" if n else "too_short"}
            for i, (c, n) in enumerate(chars.items())]


def test_compare_prompt_writes_lineage_and_marks_dropped_pairs() -> None:
    group = pd.DataFrame(_rows("p1", {"big5": 100, "big3": 200, "small5": 300, "small3": 250, "small1": 90}))
    out = compare_prompt(group, tiers=TIERS, heldout=0.0, salt="s")
    assert list(zip(out.chosen_config, out.rejected_config)) == [
        ("big5", "big3"), ("big3", "small3"), ("small5", "small3"), ("small3", "small1")]
    # lengths 100, 200, 300, 250, 90: mean 188, std 82.3, cut 146.8: only big5 (100 < 200 and < 146.8) is dropped
    assert list(out.length_filter) == ["dropped", "", "", ""]
    assert list(out.prior_agrees_length) == [False, False, True, True]
    assert set(out.split) == {"train"} and list(out.chosen_rank) == [0, 1, 1, 2]
    assert out.iloc[0].chosen == "x" * 100 and out.iloc[0].rejected_seed == 1


@pytest.mark.usefixtures("ray_local")
def test_stage_pairs_every_prompt_and_refuses_a_grid_with_no_pair(tmp_path) -> None:
    import ray.data

    rows = _rows("p1", {"big5": 100, "big3": 200, "small5": None, "small3": 250, "small1": 90}) + \
        _rows("p2", {"big5": 300, "big3": None, "small5": None, "small3": None, "small1": 80})
    stage = Comparisons(TIERS, heldout=0.0, salt="s", prompts=2)
    stage.bind(None, None, len(rows))  # as Run.stage binds it: the input's row count
    out = stage.write(ray.data.from_items(rows), tmp_path / "ok")
    assert out.stats["pairs"] == 4 and out.stats["train_pairs"] + out.stats["dropped_length"] == 4
    lonely = _rows("p3", {"big5": None, "big3": 10, "small5": 20, "small3": None, "small1": None})
    with pytest.raises(EmptyStageError, match="no valid pair|no rows"):
        stage = Comparisons(TIERS, heldout=0.0, salt="s", prompts=1)
        stage.bind(None, None, len(lonely))
        stage.write(ray.data.from_items(lonely), tmp_path / "none")
