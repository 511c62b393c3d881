"""The built-judge cache (``alma_ray.judge.cache``): the key changes with anything that builds the judge and with
nothing else, and a judge is filed whole or not at all. The build that files and reuses one under the real Ray
Train, vLLM and Serve paths is ``tests/recipes/alma/test_judge.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alma_ray.config import AlmaConfig
from alma_ray.judge import cache


def _config(model: str, tmp_path: Path, **changes: object) -> AlmaConfig:
    tree: dict = dict(base_model=model, output_dir=str(tmp_path), name="c",
                      generation={"checkpoints": [{"name": "a", "model": model}]},
                      judge={"model": model, "build": {"distill_pairs": 8}})
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return AlmaConfig.model_validate(tree)


def _key(config: AlmaConfig, model: str, prompts: list[str] | None = None) -> str:
    return cache.judge_key(cache.key_inputs(config, judge_start=model, base=model,
                                            seed_prompts=prompts or ["say hi"]))


def test_the_key_follows_what_builds_the_judge(tiny_model: str, tmp_path: Path) -> None:
    base = _key(_config(tiny_model, tmp_path), tiny_model)
    assert base == _key(_config(tiny_model, tmp_path / "elsewhere", name="other", rounds=7), tiny_model)
    assert base == _key(_config(tiny_model, tmp_path, judge__build__reuse=False), tiny_model)
    changed = [_config(tiny_model, tmp_path, judge__build__lr=1e-3), _config(tiny_model, tmp_path, seed=1),
               _config(tiny_model, tmp_path, judge__build__distill_pairs=9),
               _config(tiny_model, tmp_path, train__micro_batch=3),
               _config(tiny_model, tmp_path, resources__train_workers=1),
               _config(tiny_model, tmp_path, generation__max_tokens=7)]
    keys = {_key(c, tiny_model) for c in changed} | {_key(_config(tiny_model, tmp_path), tiny_model, ["other"])}
    assert base not in keys and len(keys) == len(changed) + 1
    annotations = tmp_path / "a.jsonl"
    annotations.write_text(json.dumps({"prompt": "p", "response": "r", "score": 3}) + "\n")
    own = _config(tiny_model, tmp_path, judge__build__annotations=str(annotations))
    first = _key(own, tiny_model)
    annotations.write_text(json.dumps({"prompt": "p", "response": "r", "score": 4}) + "\n")
    assert _key(own, tiny_model) != first  # the file's bytes, not its name
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    assert _key(_config(tiny_model, tmp_path), str(copy)) == base  # the same model in another folder
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert _key(_config(tiny_model, tmp_path), str(copy)) != base  # an edited config is another model


def test_a_judge_is_filed_whole_and_found_by_its_key(tiny_model: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALMA_RAY_CACHE", str(tmp_path / "c"))
    assert cache.lookup("k1") is None
    filed = cache.publish("k1", Path(tiny_model), {"table": [], "stage": "judge_sft", "built_by": "run"})
    assert cache.lookup("k1") == filed and (filed / "config.json").is_file()
    assert json.loads((filed / cache.META).read_text())["key"] == "k1"
    assert [p.name for p in filed.parent.iterdir()] == ["k1"]  # no temporary folder left
    again = cache.publish("k1", tmp_path, {"table": [], "stage": "x", "built_by": "y"})  # filed already: kept
    assert again == filed and json.loads((filed / cache.META).read_text())["stage"] == "judge_sft"
