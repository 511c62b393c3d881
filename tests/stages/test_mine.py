"""ALMoST's prompt mining: the filters against hand-worked completions; and the stage on the tiny model, whose
later waves draw their examples from the prompts accepted before them, resumed after a kill from its committed
waves with the same rows as an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alma_ray.config import EngineConfig, MiningConfig, ResourcesConfig
from alma_ray.ids import prompt_id
from alma_ray.stages.mine import SLOT, Mine, clean, mining_request, reject_reason


def test_requests_and_cleaning() -> None:
    request = mining_request(["a?", "b?", "c?"], 2, seed=1)
    assert request.count(SLOT) == 3 and request.endswith(SLOT) and request == mining_request(["a?", "b?", "c?"], 2, 1)
    assert clean(" How do tides work?\n\nQuery: next") == "How do tides work?"
    assert clean("Plan a trip. Query: another") == "Plan a trip."


@pytest.mark.parametrize("text, finish, reason", [
    ("", "stop", "empty"),
    ("Too short?", "stop", "too_short"),
    ("x" * 260, "stop", "too_long"),
    ("Describe how the printing press changed the way people in", "length", "cut_off"),
    ("1234 5678 90 !!! ?? ## 1234 5678 90 !!!", "stop", "non_text"),
    ("Explain how vaccines train the immune system.", "stop", "repeats_seed"),
    ("What are three ways to save water at home?", "stop", ""),
])
def test_filters_hand_worked(text: str, finish: str, reason: str) -> None:
    known = {prompt_id("Explain how vaccines train the immune system.")}
    assert reject_reason(text, finish, cfg=MiningConfig(), known=known) == reason


@pytest.mark.usefixtures("ray_local")
def test_waves_grow_the_pool_and_a_killed_stage_resumes_the_same(tiny_model: str, tmp_path: Path) -> None:
    from alma_ray.engines.registry import Engines
    from alma_ray.seeds import load_seeds

    seeds = load_seeds(["embedded:tiny"]).prompts
    cfg = MiningConfig(num_requests=12, wave=4, shots=4, max_tokens=16, min_chars=4, keep_cut_off=True)
    with Engines(EngineConfig(max_model_len=512, dtype="float32"), ResourcesConfig()) as engines:
        def mine(out: Path) -> object:
            out.mkdir(exist_ok=True)
            return Mine(cfg, tiny_model, "tiny", seeds[2:], seeds[:2], 0, engines).write(None, out)

        whole = mine(tmp_path / "whole")
        killed = tmp_path / "killed"  # an attempt killed after its first wave: its file and marker survive
        killed.mkdir()
        for name in ("w00000.parquet", "_WAVE-00000.json"):
            shutil.copy(tmp_path / "whole" / name, killed / name)
        (killed / ".w00001.tmp-dead").write_bytes(b"half a wave")
        resumed = mine(killed)
    a = pq.read_table(tmp_path / "whole").to_pandas()
    b = pq.read_table(killed).to_pandas()
    assert a.equals(b)
    assert whole.stats["filters"] == resumed.stats["filters"]  # type: ignore[attr-defined]
    assert not list(killed.glob(".w*.tmp-*"))
    assert sorted(a.request_index) == list(range(12)) and set(a.wave) == {0, 1, 2}
    assert whole.stats["filters"]["accepted"] == (a.reject == "").sum() > 0  # type: ignore[attr-defined]
