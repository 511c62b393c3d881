"""ALMA's round 1 data: the seed SFT set (``alma_ray.seed_sft``) written as D_1, each row with its ``source`` and
``origin`` (who wrote the response), so a round trained on it says where every example came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alma_ray.config import SeedSFTConfig
from alma_ray.seed_sft import load_seed_sft
from alma_ray.stages.base import Stage, write_pylist
from alma_ray.store import StageOutput, text_digest


@dataclass
class SeedRows(Stage):
    """The seed SFT rows (``round`` 1, ``prompt_id``, ``prompt``, ``response``, ``source``, ``origin``), without
    the held-out evaluation prompts."""

    config: SeedSFTConfig
    heldout: list[str]
    name: str = "seed_sft"

    def sources(self) -> dict[str, str]:
        """The rows themselves: an edited seed file makes round 1 stale."""
        return {"seed_sft": text_digest(load_seed_sft(self.config, heldout=self.heldout).rows)}

    def write(self, data: Any, out: Path) -> StageOutput:
        seed = load_seed_sft(self.config, heldout=self.heldout)
        write_pylist(seed.rows, out)
        origins: dict[str, int] = {}
        for r in seed.rows:
            origins[r["origin"]] = origins.get(r["origin"], 0) + 1
        return self.counted(len(seed.rows), origins=origins, skipped_bad_lines=seed.skipped_bad_lines,
                            dropped_heldout=seed.dropped_heldout, dropped_duplicates=seed.dropped_duplicates)
