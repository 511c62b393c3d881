"""ALMoST's configured responses: one response per mined prompt from each vanilla configuration of the grid (a model
prompted with the preamble and the first ``shots`` dialogues of a demonstration set, then ``Human: {prompt}\\n\\n
Assistant:``), temperature 1.0, top-p 0.9, through the run's sampling engines (one pool per model, every
configuration of a model in one stream). The rule filter marks each response with the first rule it breaks
(``bad``, "" when it passes), counted per rule and configuration in the manifest; nothing is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.data import Dataset

from alma_ray.config import RESPONSE_RULES, GridEntry, ResponsesConfig
from alma_ray.demonstrations import ASSISTANT, HUMAN, TURN_STOP, Dialogue, prompted
from alma_ray.engines.registry import Engines
from alma_ray.engines.sampler import TOO_LONG
from alma_ray.ids import prompt_id
from alma_ray.stages.base import Stage
from alma_ray.stages.generate import Share, sample_pool

RULES = RESPONSE_RULES
"""ALMoST's rules, in the order they are checked (a response is counted under the first it breaks)."""
_WELL = re.compile(r"well\b", re.IGNORECASE)
"""The word "well" first ("Wellington ..." is not)."""
_DOES_NOT_KNOW = re.compile(r"\b(i do not know|i don't know|i dont know|i'm not sure|i am not sure|i have no idea)\b",
                            re.IGNORECASE)


def rule_broken(response: str, finish_reason: str, *, min_chars: int, rules: tuple[str, ...] = RULES) -> str:
    """The first of ``rules`` (ALMoST's ``RULES`` by default) that ``response`` breaks, or ""."""
    return next((r for r in _broken(response, finish_reason, min_chars=min_chars) if r in rules), "")


def _broken(response: str, finish_reason: str, *, min_chars: int) -> list[str]:
    """Every rule ``response`` breaks, in ``RULES`` order."""
    text = response.strip()
    checks = {
        "prompt_too_long": finish_reason == TOO_LONG,
        "empty": not text,
        "dialogue_marker": HUMAN in text or ASSISTANT in text,
        "too_short": len(text) < min_chars,
        "ends_in_question": text.endswith("?"),
        "ends_in_colon": text.endswith(":"),
        "starts_with_well": bool(_WELL.match(text)),
        "no_final_punctuation": not text.endswith((".", "!")),
        "does_not_know": bool(_DOES_NOT_KNOW.search(text)),
    }
    return [r for r in RULES if checks[r]]


def grid_requests(batch: dict[str, np.ndarray], *, entries: list[tuple[GridEntry, list[Dialogue]]],
                  label: str) -> dict[str, list[Any]]:
    """Each accepted prompt once per configuration of one model: the prompted text (``prompt``), a per-row id
    (so each configuration samples with its own seed) and the prompt's own columns under ``query*``."""
    out: dict[str, list[Any]] = {k: [] for k in ("prompt", "prompt_id", "query", "query_id", "query_source",
                                                 "config", "demos", "shots", "config_model", "aligned")}
    for text, pid, source in zip(batch["prompt"], batch["prompt_id"], batch["source"]):
        for entry, demos in entries:
            out["prompt"].append(prompted(demos, entry.shots, [{"role": "human", "text": str(text)}]))
            out["prompt_id"].append(prompt_id(f"{pid}/{entry.name}"))
            out["query"].append(str(text))
            out["query_id"].append(str(pid))
            out["query_source"].append(str(source))
            out["config"].append(entry.name)
            out["demos"].append(entry.demos)
            out["shots"].append(entry.shots)
            out["config_model"].append(label)
            out["aligned"].append(entry.aligned)
    return out


def finish_rows(batch: pd.DataFrame, *, min_chars: int, rules: tuple[str, ...]) -> pd.DataFrame:
    """The prompt's own text and id back in ``prompt``/``prompt_id``, the rule each response breaks, its length."""
    batch = batch.drop(columns=["prompt", "prompt_id"]).rename(
        columns={"query": "prompt", "query_id": "prompt_id", "query_source": "source"})
    batch["bad"] = [rule_broken(str(r), str(f), min_chars=min_chars, rules=rules)
                    for r, f in zip(batch["response"], batch["finish_reason"])]
    batch["chars"] = batch["response"].astype(str).str.len()
    return batch


def rule_tally(table: pa.Table) -> dict[str, dict[str, int]]:
    """config -> rule ("" for passed) -> rows, of one write task."""
    df = table.select(["config", "bad"]).to_pandas()
    return {str(c): {str(k): int(v) for k, v in g["bad"].value_counts().items()} for c, g in df.groupby("config")}


@dataclass
class ConfiguredResponses(Stage):
    """One response per accepted mined prompt (``reject == ''``) from every grid configuration, with its rule."""

    cfg: ResponsesConfig
    seed: int
    demos: dict[str, list[Dialogue]]
    models: dict[str, str]
    """Grid entry name -> model folder."""
    engines: Engines
    name: str = "responses"
    needs: tuple[str, ...] = ("prompt", "prompt_id", "reject", "source")
    empty_hint: str = "no mined prompt was accepted: raise mining.num_requests or see the mined stage's filters"
    tally = staticmethod(rule_tally)
    resumable = True
    shows_progress = True

    def loads(self) -> list[str]:
        return sorted(set(self.models.values()))

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        cfg = self.cfg
        accepted = data.filter(expr="reject == ''")
        sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=TURN_STOP)
        streams = []
        by_model: dict[str, list[GridEntry]] = {}
        for entry in cfg.grid:
            by_model.setdefault(self.models[entry.name], []).append(entry)
        for folder, entries in by_model.items():
            label = entries[0].model
            requests = accepted.map_batches(grid_requests, batch_size=256,  # type: ignore[arg-type]
                                            fn_kwargs=dict(entries=[(e, self.demos[e.demos]) for e in entries],
                                                           label=label))
            share = Share(label, folder, 1, sampling, chat=False)
            streams.append(sample_pool(requests, share, engines=self.engines, completion_template="{prompt}",
                                       too_long="skip", seed_salt=f"{self.seed}:responses",
                                       pool_size=self.engines.resources.engines_per_checkpoint,
                                       progress=self.progress))
        rows = streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
        return rows.map_batches(finish_rows, batch_format="pandas",  # type: ignore[arg-type]
                                fn_kwargs=dict(min_chars=cfg.min_chars, rules=tuple(cfg.rules)))

    def progress_total(self) -> int | None:
        return None  # the rules decide how many rows an accepted prompt yields

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        per: dict[str, dict[str, int]] = {}
        for tally in tallies:
            for config, counts in tally.items():
                mine = per.setdefault(config, {r: 0 for r in ["passed", *RULES]})
                for rule, n in counts.items():
                    mine[rule or "passed"] += n
        total = {r: sum(c[r] for c in per.values()) for r in ["passed", *RULES]}
        return {"rules": total, "rules_per_config": per,
                "yield_per_config": {c: v["passed"] / max(1, sum(v.values())) for c, v in per.items()}}
