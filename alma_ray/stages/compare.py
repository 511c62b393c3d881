"""ALMoST's synthetic comparisons: the prior ranks the configurations (the rubric, best first; a list is a tie),
and per prompt each configuration whose response passed the rule filter is chosen at most once, against the next
lower-ranked configuration with a valid response. The length filter then drops a pair when the chosen response is
shorter than the rejected one and shorter than the prompt's mean minus half a standard deviation (over its valid
responses). Every candidate pair is written, with ``length_filter`` ("" kept, "dropped") and ``split`` (the
prompt's: ``train``, or ``heldout`` for the reward model's accuracy); TRL's ``prompt``/``chosen``/``rejected``
columns with both configurations and their rubric ranks as lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.data import Dataset

from alma_ray.errors import EmptyStageError
from alma_ray.ids import stable_seed
from alma_ray.stages.base import Stage
from alma_ray.stages.select import per_prompt
from alma_ray.store import StageOutput

SIDE = ("config", "config_model", "aligned", "demos", "shots", "seed", "chars")
"""Each side's lineage columns (``chosen_*``, ``rejected_*``)."""


def rubric_pairs(valid: list[str], tiers: list[list[str]]) -> list[tuple[str, str, int, int]]:
    """(chosen, rejected, chosen's tier, rejected's tier) for one prompt whose ``valid`` configurations passed the
    filter: each valid configuration against the first valid one of the nearest lower tier that has one."""
    ok = set(valid)
    pairs = []
    for i, tier in enumerate(tiers):
        for name in (n for n in tier if n in ok):
            for j in range(i + 1, len(tiers)):
                lower = [n for n in tiers[j] if n in ok]
                if lower:
                    pairs.append((name, lower[0], i, j))
                    break
    return pairs


def length_dropped(chosen: int, rejected: int, lengths: list[int]) -> bool:
    """ALMoST's length filter: the chosen response is shorter than the rejected and than mean - std / 2 of the
    prompt's valid response lengths."""
    cut = float(np.mean(lengths)) - float(np.std(lengths)) / 2
    return chosen < rejected and chosen < cut


def _columns() -> list[str]:
    sides = [f"{s}_{k}" for s in ("chosen", "rejected") for k in SIDE]
    return ["prompt_id", "prompt", "source", "chosen", "rejected", "chosen_rank", "rejected_rank", *sides,
            "length_filter", "prior_agrees_length", "split"]


def compare_prompt(group: pd.DataFrame, *, tiers: list[list[str]], heldout: float, salt: str) -> pd.DataFrame:
    """The candidate pairs of one prompt's valid responses (one row per configuration)."""
    if group.empty:
        return pd.DataFrame({c: [] for c in _columns()})
    by = {str(r["config"]): r for _, r in group.iterrows()}
    lengths = [int(r["chars"]) for r in by.values()]
    first = group.iloc[0]
    split = "heldout" if stable_seed(salt, str(first["prompt_id"])) % 10_000 < heldout * 10_000 else "train"
    rows = []
    for chosen, rejected, ci, ri in rubric_pairs(list(by), tiers):
        c, r = by[chosen], by[rejected]
        row = {"prompt_id": first["prompt_id"], "prompt": first["prompt"], "source": first["source"],
               "chosen": c["response"], "rejected": r["response"], "chosen_rank": ci, "rejected_rank": ri}
        for side, x in (("chosen", c), ("rejected", r)):
            row.update({f"{side}_{k}": x[k] for k in SIDE})
        row["length_filter"] = "dropped" if length_dropped(int(c["chars"]), int(r["chars"]), lengths) else ""
        row["prior_agrees_length"] = bool(c["chars"] > r["chars"])
        row["split"] = split
        rows.append(row)
    return pd.DataFrame(rows, columns=_columns())


def compare_tally(table: pa.Table) -> list[int]:
    """[pairs, kept, kept train, kept held out, kept where the chosen response is the longer] of a write task."""
    df = table.select(["length_filter", "split", "prior_agrees_length"]).to_pandas()
    kept = df[df.length_filter == ""]
    return [len(df), len(kept), int((kept.split == "train").sum()), int((kept.split == "heldout").sum()),
            int(kept.prior_agrees_length.sum())]


@dataclass
class Comparisons(Stage):
    """Pairs from the configured responses (the input) by the rubric, then the length filter."""

    tiers: list[list[str]]
    heldout: float
    salt: str
    prompts: int
    """The mined prompts the responses answer (a figure of the manifest)."""
    name: str = "comparisons"
    needs: tuple[str, ...] = ("prompt_id", "prompt", "response", "config", "bad", "chars")
    empty_hint: str = ("no prompt has valid responses from two ranks of the rubric: see the responses stage's rules, "
                       "raise responses.max_tokens or mining.num_requests, or change the grid")
    tally = staticmethod(compare_tally)

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return per_prompt(data, compare_prompt, expected_rows=self.input_rows or 0, valid="bad == ''", tiers=self.tiers,
                          heldout=self.heldout, salt=self.salt)

    def write(self, data: Any, out: Any) -> StageOutput:
        result = super().write(data, out)
        if not result.stats["train_pairs"]:
            raise EmptyStageError(f"stage {self.name}: every pair was held out or dropped by the length filter "
                                  f"({result.stats}); nothing to train the reward model on: {self.empty_hint}")
        return result

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        pairs, kept, train, held, agrees = (sum(t[i] for t in tallies) for i in range(5))
        return {"pairs": pairs, "kept": kept, "dropped_length": pairs - kept, "train_pairs": train,
                "heldout_pairs": held, "prior_agrees_length": agrees / kept if kept else None,
                "prompts": self.prompts}
