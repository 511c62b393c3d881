"""What every recipe is and runs with (modelled on torchtune's recipe interfaces).

A ``Recipe`` has four parts: ``plan(config)`` (pure: the stages in order and the actors each starts, printed at
start and unit-tested), ``check(config)`` (the input files read and checked before Ray starts),
``run(config, store, log)`` (run or resume every stage; returns a ``RunSummary``) and
``report(run_dir)`` (rebuild the per-round reports from what the stages committed).

Inside ``run`` a recipe calls ``Run.stage`` once per stage: the stage object (``alma_ray.stages``) says what it
needs and writes; ``Run.stage`` checks its input's columns, commits it through the store (or finds it done), and
logs one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray.data

from alma_ray.config import AnyConfig
from alma_ray.engines.apps import app_prefix
from alma_ray.engines.registry import Engines
from alma_ray.models.registry import resolve_model
from alma_ray.placement import Plan
from alma_ray.seeds import SeedSet, heldout_and_pool, load_seeds
from alma_ray.stages.base import Stage
from alma_ray.store import RunStore, StageOutput, StageResult, declared_reads, input_path, model_identity

Log = Callable[[str], None]


@dataclass
class RunSummary:
    run_dir: Path
    results: list[StageResult] = field(default_factory=list)
    wall_s: float = 0.0

    def json(self) -> dict[str, Any]:
        rows: dict[str, int] = {}
        wall: dict[str, float] = {}
        for r in self.results:
            rows[r.manifest.stage] = rows.get(r.manifest.stage, 0) + r.manifest.rows
            if not r.skipped:
                wall[r.manifest.stage] = round(wall.get(r.manifest.stage, 0.0) + r.manifest.wall_s, 2)
        skipped = [f"round_{r.manifest.round:03d}/{r.manifest.stage}" for r in self.results if r.skipped]
        return {"run_dir": str(self.run_dir), "rows": rows, "wall_s": wall, "skipped": skipped}


class Run:
    """A recipe's handle on its run directory: runs stages against the store, logs a line for each."""

    def __init__(self, store: RunStore, log: Log = print) -> None:
        self.store, self.log = store, log
        self.summary = RunSummary(store.run_dir)

    def stage(self, round_index: int, stage: Stage, read: StageResult | None = None) -> StageResult:
        """Run ``stage`` on the rows of ``read`` (None: it makes its own) unless it is committed. Its inputs are
        what it consumes: ``read``, the stages it ``reads`` (of any round, keyed ``round_NNN/stage``), the models
        it ``loads`` (by content identity) and its ``sources``; a committed stage built from other inputs is stale
        and rebuilt. While it runs it may read only those stages (``store.input_path``)."""
        declared = [*([read] if read is not None else []), *stage.reads()]
        inputs = {f"round_{s.manifest.round:03d}/{s.manifest.stage}": s.manifest for s in declared}
        models: dict[str, str] = {}
        for model in stage.loads():  # two folders of one name (/a/final, /b/final) are two inputs
            key, digest = model_identity(model, self.store.run_dir)
            if models.get(key, digest) != digest:
                key = f"{key}#{sum(k.startswith(key) for k in models)}"
            models[key] = digest

        def write(out: Path) -> StageOutput:
            with declared_reads(self.store.run_dir, stage.name, [s.path for s in declared]):
                data = None
                if read is not None:
                    data = ray.data.read_parquet(input_path(read.data))
                    stage.check(data, read.data)
                stage.bind(read.data if read is not None else None, self.store.part_rows,
                           read.manifest.rows if read is not None else None)
                return stage.write(data, out)

        result = self.store.run_stage(round_index, stage.name, write, inputs, sources=stage.sources(),
                                      models=models, resumable=stage.resumable)
        self.summary.results.append(result)
        m = result.manifest
        state = "skipped (done)" if result.skipped else f"{m.wall_s:7.1f} s"
        rate = f", {m.stats['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in m.stats else ""
        self.log(f"[round {m.round}] {m.stage:<10} {m.rows:>7} rows  {state}{rate}  -> {result.path}")
        return result


class SeedSection(Protocol):
    """A section that names the run's seed prompts (ALMA's ``synthesis``, ALMoST's ``mining``)."""

    seeds: list[str]
    skip_bad_seed_lines: bool
    max_seed_chars: int
    heldout: int


def seed_split(config: AnyConfig, section: SeedSection) -> tuple[SeedSet, list[str], list[str]]:
    """The run's seed prompts (read and filtered) and their split: (seeds, held-out prompts, the rest). A
    recipe's ``check`` and ``run`` read them the same way."""
    seeds = load_seeds(section.seeds, skip_bad=section.skip_bad_seed_lines, max_chars=section.max_seed_chars)
    heldout, rest = heldout_and_pool(seeds.prompts, heldout=section.heldout, seed=config.seed)
    return seeds, heldout, rest


@dataclass
class Started:
    """What every recipe's ``run`` starts from: the run's handle, its engines, the base model's folder, the seed
    prompts and their split (``seed_split``)."""

    run: Run
    engines: Engines
    base: str
    seeds: SeedSet
    heldout: list[str]
    rest: list[str]


@contextlib.contextmanager
def start(config: AnyConfig, store: RunStore, log: Log, section: SeedSection) -> Iterator[Started]:
    """The prologue of a recipe's ``run``: the run's handle on ``store``, the base model (prepared on first use),
    the seeds and the run's engines (ended as the block ends); the run's wall time is recorded in its summary."""
    started = time.time()
    run = Run(store, log)
    base = resolve_model(config.base_model)
    seeds, heldout, rest = seed_split(config, section)
    with Engines(config.engine, config.resources, log=log, prefix=app_prefix(store.run_dir)) as engines:
        yield Started(run, engines, base, seeds, heldout, rest)
    run.summary.wall_s = time.time() - started


class Recipe(Protocol):
    name: str

    def plan(self, config: Any) -> Plan:
        """The stages in order and the actors each starts (pure)."""

    def check(self, config: Any) -> None:
        """Read and check the run's input files (seeds, annotations) before Ray starts; raise ``AlmaError``
        naming the file and line of the first problem."""

    def run(self, config: Any, store: RunStore, log: Log = print) -> RunSummary:
        """Run or resume every stage of ``config`` in ``store``."""

    def report(self, run_dir: Path) -> list[Path]:
        """Rebuild the run's reports from its committed stages; returns the files written."""


def open_store(config: AnyConfig, *, repair: bool = False, log: Log = print) -> RunStore:
    """The run directory of ``config``, locked for this process and bound to its digest (refused when it holds a
    run of another config, or another process runs it). ``repair``: recompute damaged stages instead of
    refusing them."""
    return RunStore(config.run_dir, config.digests(), config.to_yaml(), repair=repair, part_rows=config.part_rows,
                    log=log)
