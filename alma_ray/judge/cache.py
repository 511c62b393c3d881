"""Built judges kept for reuse across runs (``judge.build.reuse``).

ALMA builds its judge once from the base model and holds it fixed; a second run that would build the same judge
takes the one built before instead of training it again. A judge is filed under a key that digests everything
that made it:

- the judge's start model and the base model (which answers the self-distillation prompts): each folder's small
  files (config, tokenizer) by content and its weight files by name, size and modification time (hashing many GB
  of weights on every run would cost more than it saves; a model rewritten in place gets a new key);
- the annotations (a file's bytes; the demo set, made by code from the seed, by its rows);
- the few-shot prompts self-distillation answers, the seed, and the settings of every stage of the build:
  ``judge`` (its template, response cut), ``judge.build``, the judge training (``AlmaConfig.judge_training``),
  the generation settings that sample the distill pairs, the engine settings and the number of training workers
  (which decides the data split).

The cache is ``$ALMA_RAY_CACHE/judges/<key>/``: the HF folder of the judge the rounds use, and ``judge.json``
(its key inputs, held-out accuracy table, stage and the run that built it). It is written to a temporary folder
and renamed into place, so a reader never sees half a judge.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from alma_ray.config import AlmaConfig
from alma_ray.judge.annotations import DEMO, demo_annotations
from alma_ray.models.registry import cache_dir
from alma_ray.store import file_digest, folder_identity, text_digest

META = "judge.json"


def judges_dir() -> Path:
    return cache_dir() / "judges"


def key_inputs(config: AlmaConfig, *, judge_start: str, base: str, seed_prompts: list[str]) -> dict[str, Any]:
    """Everything that made a judge (the module docstring), as JSON-able values."""
    build = config.judge.build
    assert build is not None
    path = Path(build.annotations).expanduser()
    annotations = text_digest(demo_annotations(config.seed)) if build.annotations == DEMO else (
        file_digest(path) if path.is_file() else build.annotations)  # a missing file: the build says so
    gen = config.generation.model_dump(mode="json", exclude={"checkpoints"})
    judge = config.judge.model_dump(mode="json", include={"chat_template", "max_response_chars"})
    return {
        "judge_start": folder_identity(judge_start), "base": folder_identity(base),
        "annotations": annotations,
        "seed_prompts": text_digest(seed_prompts), "seed": config.seed,
        "judge": judge, "build": build.model_dump(mode="json", exclude={"reuse"}),
        "training": config.judge_training.model_dump(mode="json"), "generation": gen,
        "engine": config.engine.model_dump(mode="json"), "train_workers": config.resources.train_workers,
    }


def judge_key(inputs: dict[str, Any]) -> str:
    return text_digest(inputs)


def lookup(key: str) -> Path | None:
    """The cached judge filed under ``key``, or None."""
    folder = judges_dir() / key
    return folder if (folder / META).is_file() else None


def copy_judge(src: Path, dst: Path) -> None:
    """The judge's HF folder from ``src`` into ``dst`` (hard links where the file system allows), without the
    stage manifest or the cache's ``judge.json``."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_dir():
            copy_judge(path, dst / path.name)
        elif path.name not in ("_MANIFEST.json", META):
            try:
                os.link(path, dst / path.name)  # same file system: no copy of the weights
            except OSError:
                shutil.copy2(path, dst / path.name)


def publish(key: str, model_dir: Path, meta: dict[str, Any]) -> Path:
    """File the judge in ``model_dir`` under ``key`` (atomically; a judge already filed there is kept)."""
    final = judges_dir() / key
    if lookup(key) is not None:
        return final
    tmp = final.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        copy_judge(model_dir, tmp)
        (tmp / META).write_text(json.dumps({**meta, "key": key, "filed_at": time.time()}, indent=1, default=str))
        try:
            tmp.rename(final)
        except OSError:  # another run filed the same judge meanwhile
            if lookup(key) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
