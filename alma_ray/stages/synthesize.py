"""Few-shot prompt synthesis with the base model (ALMA / ALMoST self-instruct).

Each request shows ``k_shot`` seed prompts drawn at random and leaves a slot for one more; the base model's
completion, cleaned and filtered, is a candidate prompt. Requests are built from ``ray.data.range`` so the pool
size is a matter of cluster size, and sampled through the same vLLM actor pool as responses. Deduplication,
embeddings and clustering follow (``dedup``, ``embed``, ``cluster``; ``alma_ray.recipes.alma.pool`` runs them).
``Synthesize`` is the stage: every candidate with the filter it failed, counted per filter in the manifest.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
from ray.data import Dataset

from alma_ray.config import SynthesisConfig
from alma_ray.engines.registry import Engines
from alma_ray.ids import prompt_id, stable_seed
from alma_ray.stages.base import Part, Stage, range_parts
from alma_ray.stages.generate import Share, sample_pool
from alma_ray.store import text_digest

HEADER = "Below are requests that users sent to a helpful AI assistant.\n\n"
SLOT = "Request:"
STOP = [SLOT, "\n\n"]
"""Stop sampling where ``clean`` would cut anyway: the next slot or a blank line (12% fewer tokens decoded)."""
FILTERS = ("empty", "too_short", "too_long", "cut_off", "template_leak", "non_text", "repeats_seed")


def fewshot_requests(batch: dict[str, np.ndarray], *, seeds: list[str], k: int, salt: str) -> dict[str, list]:
    """Row ``i`` of ``ray.data.range`` -> a few-shot request built from ``k`` seed prompts chosen by seed ``i``."""
    out: dict[str, list[Any]] = {"prompt": [], "prompt_id": [], "request_index": []}
    for i in batch["id"]:
        rng = random.Random(stable_seed(salt, int(i)))
        shots = rng.sample(seeds, k=min(k, len(seeds)))
        out["prompt"].append(HEADER + "".join(f"{SLOT} {s}\n\n" for s in shots) + SLOT)
        out["prompt_id"].append(f"request-{int(i)}")
        out["request_index"].append(int(i))
    return out


def clean(text: str) -> str:
    """Keep the first request the model wrote: cut at the next slot or a blank line."""
    text = text.split(SLOT)[0]
    text = re.split(r"\n\s*\n", text.strip())[0]
    return text.strip()


def classify(batch: pd.DataFrame, *, seed_ids: set[str], min_chars: int, max_chars: int, keep_cut_off: bool,
             source: str) -> pd.DataFrame:
    """Add ``text``, its ``prompt_id`` and ``reject`` (the first filter it fails, or ""), with ``source``."""
    texts = [clean(t) for t in batch["response"]]
    reasons = []
    for t, finish in zip(texts, batch["finish_reason"]):
        letters = sum(c.isalpha() for c in t)
        if not t:
            reasons.append("empty")
        elif len(t) < min_chars:
            reasons.append("too_short")
        elif len(t) > max_chars:
            reasons.append("too_long")
        elif finish == "length" and not keep_cut_off:  # max_tokens came before a stop: cut mid-prompt
            reasons.append("cut_off")
        elif HEADER.strip()[:30].lower() in t.lower() or SLOT in t:
            reasons.append("template_leak")
        elif "\ufffd" in t or letters < 0.5 * len(t):
            reasons.append("non_text")
        elif prompt_id(t) in seed_ids:
            reasons.append("repeats_seed")
        else:
            reasons.append("")
    return pd.DataFrame({
        "text": texts, "prompt_id": [prompt_id(t) for t in texts], "reject": reasons,
        "synth_seed": batch["seed"], "request_index": batch["request_index"], "source": source,
    })


def reject_tally(table: pa.Table) -> dict[str, int]:
    """One write task's rows per filter ("" for passed)."""
    return {str(k): int(v) for k, v in table.column("reject").to_pandas().value_counts().items()}


def filter_counts(tallies: list[dict[str, int]]) -> dict[str, int]:
    """Rows rejected by each filter (every filter listed, 0 when it rejected nothing) and rows that passed."""
    counts = {name: 0 for name in FILTERS}
    counts["passed"] = 0
    for tally in tallies:
        for reject, n in tally.items():
            key = reject or "passed"
            counts[key] = counts.get(key, 0) + n
    return counts


@dataclass
class Synthesize(Stage):
    """Candidate prompts for the pool: one per few-shot request (shots drawn from ``seeds``), cleaned, each with
    the first filter it fails (``reject``, "" when it passes) and its lineage (request index, sampling seed,
    source). A candidate equal to a seed or to one of ``known`` (held-out prompts) is ``repeats_seed``."""

    syn: SynthesisConfig
    model: str
    """The base model's folder."""
    source: str
    """What the ``source`` column names (the base model as configured)."""
    seeds: list[str]
    known: list[str]
    seed: int
    engines: Engines
    seed_bad_lines: int = 0
    name: str = "synthesis"
    empty_hint: str = "raise synthesis.num_requests"
    tally = staticmethod(reject_tally)
    resumable = True
    shows_progress = True

    def loads(self) -> list[str]:
        return [self.model]

    def sources(self) -> dict[str, str]:
        return {"seed_prompts": text_digest(self.seeds, self.known)}

    def parts(self) -> list[Part]:
        """Ranges of request indices, ``part_rows`` requests each."""
        return range_parts(self.syn.num_requests, self.part_rows)

    def part_data(self, part: Part) -> Dataset:
        return ray.data.range(part.stop - part.start).map_batches(
            lambda b, start=part.start: {"id": b["id"] + start}, batch_size=None)

    def transform(self, data: Dataset | None) -> Dataset:
        """Requests ``data`` (``id`` column; None: all ``num_requests``) -> classified candidates."""
        syn, salt = self.syn, f"{self.seed}:synthesis"
        requests = (ray.data.range(syn.num_requests) if data is None else data).map_batches(
            fewshot_requests,  # type: ignore[arg-type]
            fn_kwargs=dict(seeds=self.seeds, k=syn.k_shot, salt=salt), batch_size=256)
        base = Share("base", self.model, 1, dict(temperature=syn.temperature, top_p=syn.top_p,
                                                 max_tokens=syn.max_tokens, stop=STOP), chat=False)
        completions = sample_pool(requests, base, engines=self.engines, completion_template="{prompt}",
                                  too_long="skip", seed_salt=salt,
                                  pool_size=self.engines.resources.engines_per_checkpoint, progress=self.progress)
        return completions.map_batches(
            classify,  # type: ignore[arg-type]
            fn_kwargs=dict(seed_ids={prompt_id(s) for s in [*self.seeds, *self.known]}, min_chars=syn.min_chars,
                           max_chars=syn.max_chars, keep_cut_off=syn.keep_cut_off, source=f"synth:{self.source}"),
            batch_format="pandas")

    def progress_total(self) -> int | None:
        return self.syn.num_requests

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        return {"filters": filter_counts(tallies), "fewshot_seeds": len(self.seeds),
                "seed_bad_lines_skipped": self.seed_bad_lines,
                "steady_requests_per_s": self.syn.num_requests / self.busy_s if self.busy_s else None}
