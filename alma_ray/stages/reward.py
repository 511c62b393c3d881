"""Stages that ask the reward model (``alma_ray.reward``, served by the run's engines):

- ``RewardCheck``: the RM's pairwise accuracy on preference sets it never saw (ALMoST: the project's synthetic
  MT-Bench pairs), per set; ties and unscored pairs count as wrong.
- ``RewardScore``: an input stage's rows with the RM's ``reward`` (ALMoST's evaluation answers).
- ``RewardEval``: per model of the evaluation, the mean reward and length, and the win rate of the trained model
  against each other model on the same held-out prompts (``alma_ray.stages.evaluate.win_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray.data
from ray.data import Dataset

from alma_ray.engines.registry import Engines
from alma_ray.ids import stable_seed
from alma_ray.judge.annotations import pairwise_accuracy
from alma_ray.reward import RewardServer, reward_scores, score_batch
from alma_ray.stages.base import Stage, write_pylist
from alma_ray.stages.evaluate import win_rate
from alma_ray.store import StageOutput, StageResult, input_path, text_digest


def _pair_rewards(batch: dict[str, np.ndarray], *, app: str) -> dict[str, Any]:
    chosen = reward_scores(app, list(batch["prompt"]), list(batch["chosen"]))
    rejected = reward_scores(app, list(batch["prompt"]), list(batch["rejected"]))
    out: dict[str, Any] = dict(batch)
    out["reward_chosen"] = np.array([r["reward"] for r in chosen])
    out["reward_rejected"] = np.array([r["reward"] for r in rejected])
    return out


def sample_pairs(pairs: list[dict[str, Any]], most: int | None, *, seed: int) -> list[dict[str, Any]]:
    """At most ``most`` of ``pairs``: those first in an order seeded by ``seed`` and each pair's text (all: None)."""
    if most is None or len(pairs) <= most:
        return pairs
    return sorted(pairs, key=lambda p: stable_seed(seed, "check", p["prompt"], p["chosen"], p["rejected"]))[:most]


@dataclass
class RewardCheck(Stage):
    """Each preference pair with the RM's reward for both sides; the manifest has the accuracy per set."""

    server: RewardServer
    engines: Engines
    pairs: list[dict[str, Any]]
    name: str = "reward_check"

    def loads(self) -> list[str]:
        return [self.server.model]

    def sources(self) -> dict[str, str]:
        return {"pairs": text_digest(self.pairs)}

    def transform(self, data: Dataset | None) -> Dataset:
        app = self.engines.app(self.server)
        return ray.data.from_items(self.pairs).map_batches(_pair_rewards,  # type: ignore[arg-type]
                                                           batch_size=64, num_cpus=0, fn_kwargs=dict(app=app))

    def write(self, data: Any, out: Path) -> StageOutput:
        result = super().write(data, out)
        table = pq.read_table(out, columns=["source", "reward_chosen", "reward_rejected"]).to_pandas()
        per = {str(s): pairwise_accuracy(g.reward_chosen.to_numpy(), g.reward_rejected.to_numpy()).row()
               for s, g in table.groupby("source")}
        result.stats.update(accuracy=per, reward_model=self.server.label)
        return result


@dataclass
class RewardScore(Stage):
    """The input's rows with ``reward``, ``reward_flag`` (``empty``: no response) and ``reward_model``."""

    server: RewardServer
    engines: Engines
    name: str = "eval"
    prompt_column: str = "prompt"
    """The column the RM reads as the prompt (``query`` where ``prompt`` holds a prompted text)."""
    needs: tuple[str, ...] = ("prompt", "response")

    def __post_init__(self) -> None:
        self.needs = (self.prompt_column, "response")

    def loads(self) -> list[str]:
        return [self.server.model]

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return data.map_batches(score_batch, batch_size=64, num_cpus=0,  # type: ignore[arg-type]
                                fn_kwargs=dict(app=self.engines.app(self.server), label=self.server.label,
                                               prompt_column=self.prompt_column))


def reward_frame(paths: list[Path]) -> pd.DataFrame:
    """One row per evaluated answer of the scored stages at ``paths``: ``checkpoint``, ``prompt_id``, ``score``
    (the reward; NaN when unscored), ``empty`` (the reward model flagged the answer as empty), ``tokens``,
    ``chars``."""
    columns = ["checkpoint", "prompt_id", "response", "output_tokens", "reward", "reward_flag"]
    df = pd.concat([pq.read_table(input_path(p), columns=columns).to_pandas() for p in paths], ignore_index=True)
    return pd.DataFrame({"checkpoint": df.checkpoint, "prompt_id": df.prompt_id,
                         "score": df.reward.where(df.reward_flag == "", np.nan),
                         "empty": df.reward_flag == "empty", "tokens": df.output_tokens,
                         "chars": df.response.astype(str).str.len()})


@dataclass
class RewardEval(Stage):
    """Per evaluated model: mean reward, mean length, and ``model``'s win rate against it (by reward)."""

    scored: list[StageResult]
    model: str
    """The checkpoint the others are compared with (the trained model)."""
    name: str = "eval_summary"

    def reads(self) -> list[StageResult]:
        return list(self.scored)

    def write(self, data: Any, out: Path) -> StageOutput:
        df = reward_frame([s.path for s in self.scored])
        ours = df[df.checkpoint == self.model]
        rows = []
        for name, group in df.groupby("checkpoint", sort=True):
            valid = group.score.dropna()
            row: dict[str, Any] = {"checkpoint": name, "prompts": len(group),
                                   "mean_reward": float(valid.mean()) if len(valid) else None,
                                   "mean_tokens": float(group.tokens.mean()), "mean_chars": float(group.chars.mean())}
            if name != self.model:
                result = win_rate(ours, group)
                row.update({f"{self.model}_win_rate": result["win_rate"], f"{self.model}_ties": result["ties"]})
            rows.append(row)
        write_pylist(rows, out)
        return self.counted(len(rows), table=rows)
