"""ALMA's round 1 data: the seed SFT set (``alma_ray.seed_sft``) written as D_1, each row with its ``source`` and
``origin`` (who wrote the response), so a round trained on it says where every example came from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from alma_ray.config import SeedSFTConfig
from alma_ray.seed_sft import SeedSFT, load_seed_sft
from alma_ray.stages.base import Stage, write_pylist
from alma_ray.store import StageOutput, text_digest


@dataclass
class SeedRows(Stage):
    """The seed SFT rows (``round`` 1, ``prompt_id``, ``prompt``, ``response``, ``source``, ``origin``), without
    the held-out evaluation prompts."""

    config: SeedSFTConfig
    heldout: list[str]
    name: str = "seed_sft"

    @cached_property
    def seed(self) -> SeedSFT:
        """The set, read once for the digest and the write."""
        return load_seed_sft(self.config, heldout=self.heldout)

    def sources(self) -> dict[str, str]:
        """The rows themselves: an edited seed file makes round 1 stale."""
        return {"seed_sft": text_digest(self.seed.rows)}

    def write(self, data: Any, out: Path) -> StageOutput:
        seed = self.seed
        write_pylist(seed.rows, out)
        origins = dict(Counter(r["origin"] for r in seed.rows))
        return self.counted(len(seed.rows), origins=origins, skipped_bad_lines=seed.skipped_bad_lines,
                            dropped_heldout=seed.dropped_heldout, dropped_duplicates=seed.dropped_duplicates)
