"""ALMoST's prompt mining: few-shot requests whose examples are resampled from the seeds plus the prompts mined so
far, ``Query:`` framing, temperature 1.2, top-p 0.9, 64 new tokens; a completion is rejected when it is empty,
too short or long (30-250 characters), cut off, not text, a seed, or within ROUGE-L ``rouge_threshold`` of a seed,
a held-out prompt or a prompt accepted before it (``alma_ray.rouge``: candidates narrowed by a prefix filter that
misses nothing, then scored).

Requests go in waves of ``mining.wave``: a wave's examples come from the seeds and every prompt accepted in the
waves before it, its completions stream through the base model's engines (Ray Data), and the driver filters them
in request order (the accepted set is the filter's state: prompts, not responses). Each wave is committed as one
file and a marker, so a killed stage resumes at the first unfinished wave with the same accepted set.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from alma_ray.config import MiningConfig
from alma_ray.engines.registry import Engines
from alma_ray.engines.sampler import TOO_LONG
from alma_ray.ids import prompt_id, stable_seed
from alma_ray.rouge import RougeIndex
from alma_ray.stages.base import Stage, range_parts
from alma_ray.stages.generate import Share, sample_pool
from alma_ray.store import StageOutput, atomic_write_text, text_digest

SLOT = "Query:"
STOP = [SLOT, "\n\n"]
FILTERS = ("prompt_too_long", "empty", "too_short", "too_long", "cut_off", "non_text", "repeats_seed", "rouge")


def mining_request(pool: list[str], shots: int, seed: int) -> str:
    """One request: ``shots`` prompts drawn (by ``seed``) from ``pool``, each as ``Query: ...``, and an open slot."""
    rng = random.Random(seed)
    chosen = rng.sample(pool, k=min(shots, len(pool)))
    return "".join(f"{SLOT} {p}\n\n" for p in chosen) + SLOT


def clean(text: str) -> str:
    """The first query the model wrote: cut at the next slot or a blank line."""
    return re.split(r"\n\s*\n", text.split(SLOT)[0].strip())[0].strip()


def reject_reason(text: str, finish: str, *, cfg: MiningConfig, known: set[str]) -> str:
    """The first filter (before ROUGE-L) a cleaned completion fails, or ""."""
    letters = sum(c.isalpha() for c in text)
    if finish == TOO_LONG:
        return "prompt_too_long"
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if finish == "length" and not cfg.keep_cut_off:
        return "cut_off"
    if "\ufffd" in text or letters < 0.5 * len(text):
        return "non_text"
    if prompt_id(text) in known:
        return "repeats_seed"
    return ""


@dataclass
class Mine(Stage):
    """Mined prompts: every completion with the filter it failed (``reject``, "" when accepted), its ROUGE-L
    nearest neighbour among the seeds and accepted prompts, and its lineage (wave, request, sampling seed)."""

    cfg: MiningConfig
    model: str
    source: str
    seeds: list[str]
    heldout: list[str]
    seed: int
    engines: Engines
    name: str = "mined"
    empty_hint: str = "raise mining.num_requests"
    resumable = True

    def loads(self) -> list[str]:
        return [self.model]

    def sources(self) -> dict[str, str]:
        return {"seed_prompts": text_digest(self.seeds, self.heldout)}

    def progress_total(self) -> int | None:
        return self.cfg.num_requests

    def write(self, data: Any, out: Path) -> StageOutput:
        cfg, salt = self.cfg, f"{self.seed}:mining"
        index = RougeIndex(cfg.rouge_threshold, reference=[*self.seeds, *self.heldout])
        for text in [*self.seeds, *self.heldout]:
            index.add(text)
        known = {prompt_id(t) for t in [*self.seeds, *self.heldout]}
        accepted: list[str] = []
        counts: Counter[str] = Counter()
        share = Share("base", self.model, 1, dict(temperature=cfg.temperature, top_p=cfg.top_p,
                                                   max_tokens=cfg.max_tokens, stop=STOP), chat=False)
        started, compared, filtering = time.time(), 0, 0.0
        for stale in out.glob(".w*.tmp-*"):  # a wave a killed attempt was writing
            stale.unlink()
        with self.progress_bar():
            for wave in range_parts(cfg.num_requests, cfg.wave):
                marker, file = out / f"_WAVE-{wave.index:05d}.json", out / f"w{wave.index:05d}.parquet"
                fresh = not marker.exists()
                if fresh:
                    pool = [*self.seeds, *accepted]
                    requests = [{"prompt": mining_request(pool, cfg.shots, stable_seed(salt, i)),
                                 "prompt_id": f"request-{i}", "request_index": i} for i in range(wave.start, wave.stop)]
                    completions = sample_pool(
                        ray.data.from_items(requests), share, engines=self.engines, completion_template="{prompt}",
                        too_long="skip", seed_salt=salt, pool_size=self.engines.resources.engines_per_checkpoint,
                        progress=self.progress).to_pandas().sort_values("request_index")
                    rows, t0 = [], time.time()
                    for r in completions.itertuples():
                        text = clean(str(r.response))
                        reason = reject_reason(text, str(r.finish_reason), cfg=cfg, known=known)
                        score, near = (0.0, None) if reason else index.nearest(text)
                        compared += len(index.texts) if not reason else 0
                        if not reason and near is not None:
                            reason = "rouge"
                        if not reason:
                            index.add(text)
                            known.add(prompt_id(text))
                        rows.append({"prompt": text, "prompt_id": prompt_id(text), "reject": reason,
                                     "rouge_max": score, "rouge_nearest": index.texts[near] if near is not None else "",
                                     "wave": wave.index, "request_index": int(r.request_index),
                                     "synth_seed": int(r.seed), "source": f"mined:{self.source}"})
                    filtering += time.time() - t0
                    tmp = out / f".w{wave.index:05d}.tmp-{uuid.uuid4().hex[:8]}"
                    pq.write_table(pa.Table.from_pylist(rows), tmp)
                    tmp.rename(file)
                    atomic_write_text(marker, json.dumps({"rows": len(rows)}))
                table = pq.read_table(file, columns=["prompt", "reject"]).to_pylist()
                for row in table:
                    counts[row["reject"] or "accepted"] += 1
                    if not row["reject"]:
                        if not fresh:  # a wave an earlier attempt committed: its prompts join the filter's state
                            index.add(row["prompt"])
                            known.add(prompt_id(row["prompt"]))
                        accepted.append(row["prompt"])
        return self.counted(sum(counts.values()), filters={k: counts.get(k, 0) for k in [*FILTERS, "accepted"]},
                            accepted=counts.get("accepted", 0), seeds=len(self.seeds),
                            rouge_scored=index.scored, rouge_all_pairs=compared,
                            busy_s=self.busy_s, filter_s=filtering, wall_mining_s=time.time() - started)
