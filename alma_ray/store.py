"""The artifact store: one directory per (round, stage), committed atomically with a manifest.

Layout of a run directory::

    runs/<name>/
      config.yaml                      the resolved config of the run
      round_001/prompts/               part-*.parquet + _MANIFEST.json
      round_001/responses/ ...
      round_001/sft/                   an HF model folder + _MANIFEST.json

A stage writes into ``.<stage>.tmp-<id>/`` beside its final place; the manifest is written last and the
directory renamed into place (atomic on one filesystem). A stage whose manifest exists is done and is skipped on
rerun; a stage killed mid-write leaves only a ``.tmp-`` directory, removed on the next run. On a multi-node
cluster the run directory must be on storage every node sees (NFS, or a mounted bucket).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alma_ray.errors import AlmaError

MANIFEST = "_MANIFEST.json"
DATA = "data"
"""A stage that writes more than its rows (e.g. ``clusters``: rows and ``centroids.npy``) keeps the rows here."""


class StoreError(AlmaError, RuntimeError):
    """A run directory that does not match the run asked for; the message says what to do."""


@dataclass
class Manifest:
    stage: str
    round: int
    rows: int
    config_hash: str
    input_hashes: dict[str, str]
    wall_s: float
    started_at: float
    stats: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)


@dataclass
class StageOutput:
    """What a stage function reports after writing its output directory."""

    rows: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    path: Path
    manifest: Manifest
    skipped: bool

    @property
    def data(self) -> Path:
        """Where the stage's rows are: ``path/data`` for a stage that writes more than its rows, else ``path``."""
        return self.path / DATA if (self.path / DATA).is_dir() else self.path


def _content_hash(manifest: Manifest) -> str:
    import hashlib

    key = f"{manifest.stage}:{manifest.round}:{manifest.rows}:{manifest.config_hash}:{manifest.input_hashes}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class RunStore:
    """A run directory bound to one config hash."""

    def __init__(self, run_dir: Path, config_hash: str, config_yaml: str) -> None:
        self.run_dir = run_dir.resolve()
        self.config_hash = config_hash
        self.run_dir.mkdir(parents=True, exist_ok=True)
        hash_file = self.run_dir / "config.hash"
        if hash_file.exists() and (previous := hash_file.read_text().strip()) != config_hash:
            raise StoreError(
                f"{self.run_dir} holds a run with a different config (hash {previous}, now {config_hash}). "
                "Use another name=... or output_dir=..., or delete that directory to start over.")
        atomic_write_text(self.run_dir / "config.yaml", config_yaml)
        atomic_write_text(hash_file, config_hash + "\n")

    def path(self, round_index: int, stage: str) -> Path:
        return self.run_dir / f"round_{round_index:03d}" / stage

    def manifest(self, round_index: int, stage: str) -> Manifest | None:
        return read_manifest(self.path(round_index, stage))

    def done(self, round_index: int, stage: str) -> StageResult | None:
        """The committed stage, or None."""
        m = self.manifest(round_index, stage)
        return None if m is None else StageResult(self.path(round_index, stage), m, skipped=True)

    def run_stage(self, round_index: int, stage: str, write: Callable[[Path], StageOutput],
                  inputs: dict[str, Manifest] | None = None) -> StageResult:
        """Run ``write(tmp_dir)`` unless the stage is already committed; commit atomically with its manifest."""
        final = self.path(round_index, stage)
        inputs = inputs or {}
        input_hashes = {name: m.content_hash for name, m in inputs.items()}
        done = self.manifest(round_index, stage)
        if done is not None:
            if done.input_hashes != input_hashes:
                raise StoreError(f"{final} was built from other inputs than the current ones; delete it to rebuild")
            return StageResult(final, done, skipped=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{stage}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a directory without a manifest is not a finished stage
            shutil.rmtree(final)
        tmp = final.parent / f".{stage}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.time()
        try:
            output = write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = Manifest(stage=stage, round=round_index, rows=output.rows, config_hash=self.config_hash,
                            input_hashes=input_hashes, wall_s=round(time.time() - started, 3),
                            started_at=started, stats=output.stats)
        manifest.content_hash = _content_hash(manifest)
        atomic_write_text(tmp / MANIFEST, manifest.to_json())
        tmp.rename(final)
        return StageResult(final, manifest, skipped=False)


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The manifest of a committed stage directory, or None when the stage is not committed."""
    file = stage_dir / MANIFEST
    if not file.exists():
        return None
    return Manifest(**json.loads(file.read_text()))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; it replaces ``path`` only if the block ends
    without an error, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
