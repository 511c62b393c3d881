"""Training as a stage: fit a model with an objective on the examples (Ray Train + DeepSpeed ZeRO,
``alma_ray.train.loop.fit``); the stage directory is the trained HF folder, with ``train_metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from alma_ray.config import ResourcesConfig, TrainConfig
from alma_ray.engines.registry import Engines
from alma_ray.stages.base import Stage
from alma_ray.store import StageOutput, StageResult
from alma_ray.train.data import Examples, read_examples
from alma_ray.train.loop import fit
from alma_ray.train.objectives import Objective


@dataclass
class Train(Stage):
    """Train ``model`` with ``objective`` on ``examples``: committed stages' rows (unioned in order, e.g. ALMA's
    D_1..D_r, each an input of the stage: one table when small, else a lazy dataset) or rows given as they are
    (then ``made_from``, the committed stages they were made from, are its inputs)."""

    name: str
    objective: Objective
    train: TrainConfig
    resources: ResourcesConfig
    model: str
    seed: int
    examples: list[StageResult] | Examples
    run_name: str | None = None
    figures_extra: dict[str, Any] = field(default_factory=dict)
    """Recorded beside the training metrics (e.g. which targets a judge trained on)."""
    where: list[tuple[str, str, Any]] | None = None
    """Only the example rows matching these pyarrow filters (e.g. a comparisons stage's train split)."""
    heldout: list[tuple[str, str, Any]] | None = None
    """Rows of the same stages matching these filters are evaluated after training (``fit``'s ``heldout``: the
    reward model's ``heldout_pair_accuracy``); none matching: no evaluation."""

    made_from: list[StageResult] = field(default_factory=list)
    engines: Engines | None = None
    """The run's engines: asked for room when the stage runs (a stage skipped as done asks nothing)."""

    def reads(self) -> list[StageResult]:
        return [*(self.examples if isinstance(self.examples, list) else []), *self.made_from]

    def loads(self) -> list[str]:
        reference = getattr(self.objective, "reference", None)  # DPO's frozen reference, when not the model itself
        return [self.model, *([reference] if reference else [])]

    def rows(self, where: list[tuple[str, str, Any]] | None = None) -> Examples:
        if isinstance(self.examples, list):
            return read_examples([str(e.data) for e in self.examples], list(self.objective.columns),
                                 where or self.where)
        return self.examples

    def write(self, data: Any, out: Path) -> StageOutput:
        if self.engines is not None:
            self.engines.before_training(self.model, self.train, sequences=self.objective.sequences,
                                         logit_positions=self.objective.logit_positions)
        rows = self.rows()
        heldout = self.rows(self.heldout) if self.heldout else None
        if isinstance(heldout, pa.Table) and heldout.num_rows == 0:
            heldout = None
        metrics = fit(rows, self.objective, train=self.train, resources=self.resources, model=self.model,
                      out_dir=out, seed=self.seed, run_name=self.run_name, heldout=heldout)
        count = rows.num_rows if isinstance(rows, pa.Table) else rows.count()
        return StageOutput(rows=count, stats={**self.figures_extra,
                                              **{k: v for k, v in metrics.items() if k != "losses"}})
