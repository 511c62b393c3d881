"""Scoring: every (prompt, response) row through the judge application on Ray Serve (``alma_ray.judge.serve``).

The stage starts the app for its panel (the configured judge ensemble, or judges compared side by side), streams
the rows through it from Ray Data, and deletes it. Rows the judge cannot score come back flagged, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.data
from ray.data import Dataset

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.judge.serve import Panel, judge_service, score_dataset
from alma_ray.stages.base import Stage
from alma_ray.store import StageOutput


@dataclass
class Score(Stage):
    """The input's rows with the panel's scores (``score``, ``score_int``, ``score_dist``, ``judge_flag``, ...)."""

    panel: Panel
    engine: EngineConfig
    resources: ResourcesConfig
    name: str = "scores"
    needs: tuple[str, ...] = ("prompt", "response")

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return score_dataset(data, batch_size=self.panel.max_batch_size, resources=self.resources)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        with judge_service(self.panel, self.engine, self.resources):
            return super().write(data, out)

    def figures(self, out: Path, rows: int) -> dict[str, Any]:
        valid = ray.data.read_parquet(str(out), columns=["score", "judge_flag"]).filter(expr="judge_flag == ''")
        scored = valid.count()
        return {"mean_score": valid.mean("score") if scored else None, "flagged": rows - scored}
