"""Scoring: every (prompt, response) row through the judge application on Ray Serve (``alma_ray.judge.serve``).

The stage asks the run's engines for its panel's app (the configured judge ensemble, started once and kept for
every round: ALMA holds the judge fixed; or judges compared side by side, given back after the stage), and
streams the rows through it from Ray Data. Rows the judge cannot score come back flagged, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.data import Dataset

from alma_ray.engines.registry import Engines
from alma_ray.judge.serve import Panel, score_dataset
from alma_ray.stages.base import Stage
from alma_ray.store import StageOutput


def score_tally(table: Any) -> list[Any]:
    """Sums over the rows the judge scored of a write task: [rows, score, chars, score x chars, score^2, chars^2]
    (chars: the response's length), from which ``Score.figures`` computes the mean score and its correlation with
    length without holding the rows."""
    df = table.select(["score", "judge_flag", "response"]).to_pandas()
    valid = df[df.judge_flag == ""]
    s, c = valid.score.to_numpy(dtype=float), valid.response.str.len().to_numpy(dtype=float)
    return [len(valid), *(float(x.sum()) for x in (s, c, s * c, s * s, c * c))]


@dataclass
class Score(Stage):
    """The input's rows with the panel's scores (``score``, ``score_int``, ``score_dist``, ``judge_flag``, ...)."""

    panel: Panel
    engines: Engines
    keep: bool = True
    """Keep the app up for later stages (the run's judge), or give it back after this one."""
    name: str = "scores"
    needs: tuple[str, ...] = ("prompt", "response")
    tally = staticmethod(score_tally)
    resumable = True
    shows_progress = True

    def loads(self) -> list[str]:
        return self.panel.loads()

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return score_dataset(data, batch_size=self.panel.max_batch_size, resources=self.engines.resources,
                             app=self.engines.app(self.panel), progress=self.progress)

    def write(self, data: Dataset | None, out: Path) -> StageOutput:
        try:
            return super().write(data, out)
        finally:
            if not self.keep:
                self.engines.stop_app(self.panel)

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        """The mean score, the flagged rows, the scored responses' mean length in characters, the Pearson
        correlation of score with length (a judge that rewards length, or brevity, shows here; None when either
        is constant) and the least-squares slope of score on length (score per character; what length-controlled
        selection takes out)."""
        n, s, c, sc, ss, cc = (sum(t[i] for t in tallies) for i in range(6))
        if not n:
            return {"mean_score": None, "flagged": rows, "mean_chars": None, "score_length_corr": None,
                    "score_length_slope": None}
        var_s, var_c, cov = ss / n - (s / n) ** 2, cc / n - (c / n) ** 2, sc / n - s * c / n**2
        corr = cov / math.sqrt(var_s * var_c) if var_s > 1e-12 and var_c > 1e-12 else None
        return {"mean_score": s / n, "flagged": rows - n, "mean_chars": c / n,
                "score_length_corr": None if corr is None else round(corr, 4),
                "score_length_slope": cov / var_c if var_c > 1e-12 else 0.0}
