"""Scoring: every (prompt, response) row through the judge application on Ray Serve (``alma_ray.judge.serve``).

The stage asks the run's engines for its panel's app (the configured judge ensemble, started once and kept for
every round: ALMA holds the judge fixed; or judges compared side by side, given back after the stage), and
streams the rows through it from Ray Data. Rows the judge cannot score come back flagged, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.data import Dataset

from alma_ray.judge.serve import Panel, score_dataset
from alma_ray.progress import StageProgress, busy_window
from alma_ray.stages.base import Stage
from alma_ray.stages.engines import Engines
from alma_ray.store import StageOutput


def score_tally(table: Any) -> list[Any]:
    """[rows the judge scored, the sum of their scores] of a write task."""
    df = table.select(["score", "judge_flag"]).to_pandas()
    valid = df[df.judge_flag == ""]
    return [len(valid), float(valid.score.sum())]


@dataclass
class Score(Stage):
    """The input's rows with the panel's scores (``score``, ``score_int``, ``score_dist``, ``judge_flag``, ...)."""

    panel: Panel
    engines: Engines
    keep: bool = True
    """Keep the app up for later stages (the run's judge), or give it back after this one."""
    rows: int | None = None
    """Rows of the input stage (for the progress bar's total)."""
    name: str = "scores"
    needs: tuple[str, ...] = ("prompt", "response")
    tally = staticmethod(score_tally)
    resumable = True
    _progress: Any = field(default=None, repr=False)

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return score_dataset(data, batch_size=self.panel.max_batch_size, resources=self.engines.resources,
                             app=self.engines.judge_app(self.panel), progress=self._progress)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        try:
            with StageProgress(self.name, self.rows) as progress:
                self._progress = progress.counter
                result = super().write(data, out)
            result.stats["busy_s"] = busy_window(progress.final)
            return result
        finally:
            if not self.keep:
                self.engines.stop_judge(self.panel)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        scored, total = sum(t[0] for t in tallies), sum(t[1] for t in tallies)
        return {"mean_score": total / scored if scored else None, "flagged": rows - scored}
