import json
from pathlib import Path

import pytest

from alma_ray.ids import prompt_id
from alma_ray.seeds import SeedError, load_seeds


def test_embedded_prompt_sets_load() -> None:
    seeds = load_seeds(["embedded:mt-bench", "embedded:ifbench", "embedded:writingbench", "embedded:tiny"])
    assert {"embedded:mt-bench", "embedded:ifbench", "embedded:writingbench", "embedded:tiny"} == set(seeds.sources)
    assert len(seeds.prompts) == len({prompt_id(p) for p in seeds.prompts}) > 300


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "seeds.jsonl"
    f.write_bytes(b'{"prompt": "ok one"}\n{"prompt": \n\n{"text": "x"}\n\xff\xfe\n{"prompt": "ok two"}\n')
    with pytest.raises(SeedError, match=rf"{f}:2: not valid JSON"):
        load_seeds([str(f)])
    seeds = load_seeds([str(f)], skip_bad=True)
    assert seeds.prompts == ["ok one", "ok two"]
    assert seeds.skipped_bad_lines == 4  # bad JSON, empty, missing field, non-UTF-8


def test_missing_file_and_unknown_set(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="seed file not found"):
        load_seeds([str(tmp_path / "none.jsonl")])
    with pytest.raises(SeedError, match="unknown embedded seed set"):
        load_seeds(["embedded:nope"])


def test_a_corrupt_parquet_is_named_and_long_prompts_are_counted(tmp_path: Path) -> None:
    bad = tmp_path / "seeds.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(SeedError, match="seeds.parquet: not a readable parquet file"):
        load_seeds([str(bad)])
    good = tmp_path / "seeds.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": p}) for p in ["short one", "x" * 50, "short one", "another"]))
    seeds = load_seeds([str(good)], max_chars=20)
    assert seeds.prompts == ["short one", "another"]
    assert (seeds.skipped_too_long, seeds.skipped_other) == (1, 1)
