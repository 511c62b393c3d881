"""The seed SFT set: embedded sets labelled with their origin, user files checked line by line, held-out prompts
left out; the gate's preference sets likewise."""

from __future__ import annotations

from pathlib import Path

import pytest

from alma_ray.config import SeedSFTConfig
from alma_ray.judge.preferences import PreferenceError, load_preferences
from alma_ray.seed_sft import SeedSFTError, load_seed_sft


def test_the_embedded_sets_say_who_wrote_each_response() -> None:
    mtbench = load_seed_sft(SeedSFTConfig(sources=["embedded:mt-bench-references"]))
    assert len(mtbench.rows) == 30
    assert all("GPT-4" in r["origin"] or "gpt-4" in r["origin"] for r in mtbench.rows)
    assert all("aligned model" in r["origin"] for r in mtbench.rows)
    tiny = load_seed_sft(SeedSFTConfig(sources=["embedded:tiny-sft"]), heldout=["What is 12 times 12?"])
    assert tiny.dropped_heldout == 1 and len(tiny.rows) == 11 and {r["round"] for r in tiny.rows} == {1}


def test_a_users_file_with_messages_and_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "sft.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n'
                 '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "c"}, '
                 '{"role": "assistant", "content": "d"}]}\n'
                 '{"prompt": "e"}\n'
                 'not json\n')
    with pytest.raises(SeedSFTError, match=r"sft.jsonl:3: 'response' must be a non-empty string"):
        load_seed_sft(SeedSFTConfig(sources=[str(f)]))
    seed = load_seed_sft(SeedSFTConfig(sources=[str(f)], skip_bad_lines=True))
    assert [(r["prompt"], r["response"]) for r in seed.rows] == [("a", "b"), ("c", "d")]
    assert seed.skipped_bad_lines == 2 and seed.rows[0]["source"] == str(f)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SeedSFTError, match="no usable seed SFT rows"):
        load_seed_sft(SeedSFTConfig(sources=[str(tmp_path / "empty.jsonl")]))
    with pytest.raises(SeedSFTError, match="file not found"):
        load_seed_sft(SeedSFTConfig(sources=[str(tmp_path / "missing.jsonl")]))


def test_preference_sets_are_checked_by_file_and_line(tmp_path: Path) -> None:
    pairs = load_preferences(["embedded:tiny-preferences"])
    assert len(pairs) == 12 and all("not independent human judgments" in p["origin"] for p in pairs)
    f = tmp_path / "prefs.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(PreferenceError, match=r"prefs.jsonl:2: 'rejected' must be a non-empty string"):
        load_preferences([str(f)])
    with pytest.raises(PreferenceError, match="unknown embedded preference set"):
        load_preferences(["embedded:nope"])
