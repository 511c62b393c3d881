"""The artifact store: one directory per (round, stage), committed atomically with a manifest.

Layout of a run directory::

    runs/<name>/
      config.yaml, config.hash         the resolved config of the run and its digest (written at the first commit)
      .lock                            held by the process that runs it (alma_ray.store.RunLock)
      round_001/prompts/               part-*.parquet + _MANIFEST.json
      round_001/responses/ ...
      round_001/sft/                   an HF model folder + _MANIFEST.json

A stage writes into ``.<stage>.tmp-<id>/`` beside its final place; the manifest is written last and the
directory renamed into place (atomic on one filesystem). A resumable stage (generation, scoring, synthesis) writes
into ``.<stage>.partial/`` instead, one part at a time (``alma_ray.stages.base``), and a rerun keeps the parts that
were committed when it was killed. The manifest lists every file with its size and BLAKE2 digest; a rerun skips a
stage only when its files are all there as committed (``StageDamagedError`` names the first that is not), and a
stage's ``content_hash`` is a hash of those digests, so a stage recomputed with other content makes every stage
built from it stale (rebuilt on the next run). One run at a time holds a run directory (``RunLock``). On a
multi-node cluster the run directory must be on storage every node sees (NFS, or a mounted bucket).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alma_ray.errors import AlmaError

MANIFEST = "_MANIFEST.json"
PARTIAL = "_PARTIAL.json"
DATA = "data"
"""A stage that writes more than its rows (e.g. ``clusters``: rows and ``centroids.npy``) keeps the rows here."""


class StoreError(AlmaError, RuntimeError):
    """A run directory that does not match the run asked for; the message says what to do."""


class StageDamagedError(StoreError):
    """A committed stage whose files are not as committed (missing, truncated, edited) or whose manifest is
    unreadable."""


class RunLockedError(StoreError):
    """The run directory is held by another live process."""


class UndeclaredInputError(StoreError):
    """A stage read a committed stage it did not declare as an input (its hash would not make it stale)."""


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
    files: dict[str, list[int | str]] = field(default_factory=dict)
    """Every file of the stage (relative path -> [size, mtime_ns, blake2b]); empty in manifests written before
    verified commits."""
    file_rows: int | None = None
    """The rows its parquet files held at the commit, when those are the stage's rows (None: a model, or a stage
    whose rows are not its files); a rerun checks ``rows`` against the files again."""

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


_READS: contextvars.ContextVar[tuple[Path, str, tuple[Path, ...]] | None] = contextvars.ContextVar(
    "declared_reads", default=None)


@contextlib.contextmanager
def declared_reads(run_dir: Path, stage: str, dirs: list[Path]) -> Iterator[None]:
    """While a stage runs: the committed stages of ``run_dir`` it may read (``input_path`` refuses the rest)."""
    token = _READS.set((run_dir.resolve(), stage, tuple(d.resolve() for d in dirs)))
    try:
        yield
    finally:
        _READS.reset(token)


def input_path(path: str | Path) -> str:
    """``path`` to read, refused (``UndeclaredInputError``) when a stage is running and it lies in another
    committed stage of the run than those the stage declared: every read of the run goes through here."""
    held = _READS.get()
    resolved = Path(path).resolve()
    if held is not None:
        run_dir, stage, dirs = held
        parts = resolved.relative_to(run_dir).parts if resolved.is_relative_to(run_dir) else ()
        committed = len(parts) >= 2 and parts[0].startswith("round_") and not parts[1].startswith(".")
        if committed and not any(resolved.is_relative_to(d) for d in dirs):  # its own temporary output is fine
            raise UndeclaredInputError(f"stage {stage} read {resolved}, which is not among its declared inputs "
                                       f"({', '.join(str(d.relative_to(run_dir)) for d in dirs) or 'none'}): "
                                       "declare it (Stage.reads) so that a change to it makes the stage stale")
    return str(path)


def file_digest(path: Path) -> str:
    """BLAKE2b (16 bytes) of a file's bytes, read in 8 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def text_digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable values (a stage's sources: seed prompts, annotation rows)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def folder_identity(folder: str | Path) -> dict[str, Any]:
    """What a model folder is, cheaply: files up to ``SMALL_FILE`` by content, larger ones (weights) by size and
    modification time (hashing many GB of weights on every run would cost more than it saves; a model rewritten
    in place gets a new identity)."""
    out: dict[str, Any] = {}
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        name = str(path.relative_to(root))
        out[name] = file_digest(path) if st.st_size <= SMALL_FILE else [st.st_size, st.st_mtime_ns]
    return out


SMALL_FILE = 1 << 20
"""Files up to this size are identified by their bytes, larger ones by name, size and modification time."""


def model_identity(model: str, run_dir: Path) -> tuple[str, str]:
    """(key, digest) of a model a stage loads: a model this run committed (``round_002/sft``) by its manifest's
    content hash; a folder elsewhere by its name and ``folder_identity``; a hub id by itself."""
    path = Path(model)
    if path.is_dir():
        path = path.resolve()
        manifest = read_manifest(path) if path.is_relative_to(run_dir) else None
        if manifest is not None:
            return f"model:{path.relative_to(run_dir)}", manifest.content_hash
        return f"model:{path.name}", text_digest(folder_identity(path))
    return f"model:{model}", text_digest(model)


def parquet_files(root: Path) -> list[Path]:
    """The parquet files under ``root`` as Ray reads a directory (no hidden or ``_`` paths), sorted by name: the
    same on every rerun."""
    return sorted((p for p in root.rglob("*.parquet")
                   if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)), key=str)


def parquet_rows(stage_dir: Path) -> int | None:
    """Rows in a stage's committed parquet files (``data/`` when it keeps its rows there), from the footers; None
    when it has none."""
    files = parquet_files(stage_dir / DATA if (stage_dir / DATA).is_dir() else stage_dir)
    if not files:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return sum(pq.read_metadata(f).num_rows for f in files)
    except (OSError, pa.ArrowInvalid):  # not parquet rows (or unreadable: the file digests say so)
        return None


def _files_of(stage_dir: Path) -> dict[str, list[int | str]]:
    out: dict[str, list[int | str]] = {}
    for path in sorted(p for p in stage_dir.rglob("*") if p.is_file() and p.name not in (MANIFEST, PARTIAL)):
        st = path.stat()
        out[str(path.relative_to(stage_dir))] = [st.st_size, st.st_mtime_ns, file_digest(path)]
    return out


def _content_hash(manifest: Manifest) -> str:
    if manifest.files:  # the data itself: digests only, so a rewrite with equal bytes keeps its dependents
        key = json.dumps([manifest.stage, manifest.round, manifest.rows, sorted(f[2] for f in manifest.files.values())])
    else:  # a manifest from before verified commits
        key = f"{manifest.stage}:{manifest.round}:{manifest.rows}:{manifest.config_hash}:{manifest.input_hashes}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _same_inputs(recorded: dict[str, str], now: dict[str, str]) -> bool:
    """Whether a committed stage was built from the inputs ``now``. A manifest written before inputs were declared
    (its stage inputs keyed by bare stage name, no models) is held to what it recorded, as it was then: each stage
    input against the input of that name now, in any round, and each recorded source exactly; so a finished run of
    an earlier release is not rebuilt, and a stage rebuilt since is checked on all its inputs."""
    if any("/" in key or key.startswith("model:") for key in recorded):
        return recorded == now
    by_stage: dict[str, set[str]] = {}
    for key, digest in now.items():
        if "/" in key and not key.startswith(("model:", "source:")):
            by_stage.setdefault(key.split("/", 1)[1], set()).add(digest)
    return all(now.get(key) == digest if key.startswith("source:") else digest in by_stage.get(key, set())
               for key, digest in recorded.items())


def verify(stage_dir: Path, manifest: Manifest) -> str | None:
    """What is wrong with a committed stage's files (the first problem found), or None. A file whose size and
    modification time are as committed is trusted; one touched since is hashed again."""
    for rel, (size, mtime_ns, digest) in manifest.files.items():
        path = stage_dir / rel
        if not path.is_file():
            return f"{path} is missing"
        st = path.stat()
        if st.st_size != size:
            return f"{path} has {st.st_size} bytes, {size} were committed (truncated or rewritten)"
        if st.st_mtime_ns != mtime_ns and file_digest(path) != digest:
            return f"{path} was changed after it was committed (its checksum differs)"
    if manifest.file_rows is not None and (held := parquet_rows(stage_dir)) != manifest.rows:
        return f"{stage_dir / MANIFEST} says {manifest.rows} rows, its files hold {held}"
    return None


class RunLock:
    """An exclusive lock on a run directory (``flock`` on ``<run>/.lock``), held while a process runs it.

    A lock left by a process that died is free (the kernel drops a dead process's locks); taking it over is
    logged with the dead process's pid. A second live run of the same directory is refused, naming the holder.
    Within one process the lock is shared (re-entrant), so a driver may open the same run's store again.
    """

    _held: dict[Path, tuple[RunLock, int]] = {}

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.path = run_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"{run_dir} is being run by another process ({holder}); wait for it to "
                                     "finish or stop it, or use another name=...") from None
            raise
        previous = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            log(f"store: took over the lock of {run_dir} from a run that ended without releasing it ({previous})")
        me = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, me.encode(), 0)

    @classmethod
    def acquire(cls, run_dir: Path, log: Callable[[str], None] = print) -> RunLock:
        if run_dir in cls._held:
            lock, count = cls._held[run_dir]
            cls._held[run_dir] = (lock, count + 1)
            return lock
        lock = cls(run_dir, log)
        cls._held[run_dir] = (lock, 1)
        return lock

    def release(self) -> None:
        if self.fd < 0:
            return
        run_dir = self.path.parent
        lock, count = self._held.get(run_dir, (self, 1))
        if count > 1:
            self._held[run_dir] = (lock, count - 1)
            return
        self._held.pop(run_dir, None)
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # a clean exit leaves an empty lock file: nothing to take over
            os.close(self.fd)
        self.fd = -1


class RunStore:
    """A run directory bound to one config digest, held by this process for its life (``close`` releases it).

    ``config_hashes`` are the digests this config answers to: the current one first, then older formulas of the
    same config (a run directory written by an earlier release is still recognised). ``repair``: recompute a
    damaged committed stage instead of refusing it. ``part_rows``: rows per resumable part of a long stage.
    """

    def __init__(self, run_dir: Path, config_hash: str | tuple[str, ...], config_yaml: str, *,
                 repair: bool = False, part_rows: int | None = None, log: Callable[[str], None] = print) -> None:
        hashes = (config_hash,) if isinstance(config_hash, str) else tuple(config_hash)
        self.run_dir = run_dir.resolve()
        self.config_hash, self.known_hashes = hashes[0], set(hashes)
        self.config_yaml, self.repair, self.part_rows, self.log = config_yaml, repair, part_rows, log
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock.acquire(self.run_dir, log)
        hash_file = self.run_dir / "config.hash"
        if hash_file.exists() and (previous := hash_file.read_text().strip()) not in self.known_hashes:
            self.lock.release()
            raise StoreError(
                f"{self.run_dir} holds a run with a different config (hash {previous}, now {self.config_hash}). "
                "Use another name=... or output_dir=..., or delete that directory to start over.")
        self._bound = hash_file.exists() and previous == self.config_hash

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bind(self) -> None:
        """Write config.yaml and config.hash: at the first commit, so a start that fails on bad input leaves no
        claim on the directory."""
        if not self._bound:
            atomic_write_text(self.run_dir / "config.yaml", self.config_yaml)
            atomic_write_text(self.run_dir / "config.hash", self.config_hash + "\n")
            self._bound = True

    def path(self, round_index: int, stage: str) -> Path:
        return self.run_dir / f"round_{round_index:03d}" / stage

    def manifest(self, round_index: int, stage: str) -> Manifest | None:
        return read_manifest(self.path(round_index, stage))

    def done(self, round_index: int, stage: str) -> StageResult | None:
        """The committed stage, or None."""
        m = self.manifest(round_index, stage)
        return None if m is None else StageResult(self.path(round_index, stage), m, skipped=True)

    def _reusable(self, final: Path, done: Manifest, input_hashes: dict[str, str]) -> bool:
        """True when the committed stage can be skipped; False when it must be rebuilt (stale or, with
        ``repair``, damaged). Raises for a stage of another config, or a damaged one without ``repair``."""
        if done.config_hash not in self.known_hashes:
            raise StoreError(f"{final} was written by another config (hash {done.config_hash}, now "
                             f"{self.config_hash}); use another name=... or delete the run directory")
        compared = input_hashes if done.files else {  # a manifest from before sources were inputs
            k: v for k, v in input_hashes.items() if not k.startswith("source:")}
        if not _same_inputs(done.input_hashes, compared):
            self.log(f"store: {final} was built from other inputs than the current ones: rebuilding it")
            return False
        if (problem := verify(final, done)) is None:
            return True
        if not self.repair:
            raise StageDamagedError(f"committed stage {final} is damaged: {problem}. Rerun with --repair to "
                                    "recompute it (and what was built from it), or restore the file")
        self.log(f"store: {problem}: recomputing {final} (--repair)")
        return False

    def run_stage(self, round_index: int, stage: str, write: Callable[[Path], StageOutput],
                  inputs: dict[str, Manifest] | None = None, *, sources: dict[str, str] | None = None,
                  models: dict[str, str] | None = None, resumable: bool = False) -> StageResult:
        """Run ``write(dir)`` unless the stage is already committed (and intact, from the same inputs); commit
        atomically with its manifest. ``inputs`` are the committed stages it reads (keyed ``round_NNN/stage``),
        ``models`` the identities of the models it loads (``model_identity``), ``sources`` the digests of what
        else it reads (seed files, annotations). A ``resumable`` stage's directory survives a kill and is handed
        to the rerun's ``write`` with the parts it had committed."""
        final = self.path(round_index, stage)
        input_hashes = {name: m.content_hash for name, m in (inputs or {}).items()}
        input_hashes.update(models or {})
        input_hashes.update({f"source:{name}": digest for name, digest in (sources or {}).items()})
        try:
            done = read_manifest(final)
        except StageDamagedError as e:
            if not self.repair:
                raise
            self.log(f"store: {e}: recomputing {final} (--repair)")
            done = None
        if done is not None and self._reusable(final, done, input_hashes):
            return StageResult(final, done, skipped=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{stage}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not a finished stage (no manifest), a stale or a damaged one
            shutil.rmtree(final)
        key = {"config_hash": self.config_hash, "input_hashes": input_hashes, "part_rows": self.part_rows}
        if resumable:
            tmp = final.parent / f".{stage}.partial"
            if tmp.exists() and _read_json(tmp / PARTIAL) != key:
                shutil.rmtree(tmp)
            if tmp.exists():
                self.log(f"store: resuming {final} from the parts committed before it stopped")
            tmp.mkdir(exist_ok=True)
            atomic_write_text(tmp / PARTIAL, json.dumps(key))
        else:
            tmp = final.parent / f".{stage}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
        started = time.time()
        try:
            output = write(tmp)
        except BaseException:
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = Manifest(stage=stage, round=round_index, rows=output.rows, config_hash=self.config_hash,
                            input_hashes=input_hashes, wall_s=round(time.time() - started, 3),
                            started_at=started, stats=output.stats, files=_files_of(tmp))
        manifest.content_hash = _content_hash(manifest)
        if (held := parquet_rows(tmp)) == output.rows:
            manifest.file_rows = held
        self._bind()
        atomic_write_text(tmp / MANIFEST, manifest.to_json())
        tmp.rename(final)
        (final / PARTIAL).unlink(missing_ok=True)  # after the rename: a kill before it keeps the parts resumable
        return StageResult(final, manifest, skipped=False)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The manifest of a committed stage directory, or None when the stage is not committed. A manifest that
    cannot be read raises ``StageDamagedError`` naming it."""
    file = stage_dir / MANIFEST
    if not file.exists():
        return None
    try:
        fields = json.loads(file.read_text())
        if not isinstance(fields, dict) or not fields:
            raise ValueError("it holds no manifest fields")
        return Manifest(**fields)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise StageDamagedError(f"{file} is not a readable manifest ({e}); delete {stage_dir} to recompute "
                                "that stage") from None


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
