"""The judge build's own stages (ALMA's judge, built once in round 0; ``alma_ray.recipes.alma.judge`` runs them):

- ``Annotations``: (prompt, response, score) rows, split by question into train and held-out.
- ``HeldoutAccuracy``: pairwise accuracy on the held-out preference pairs of several judges side by side,
  integer (the most likely rating) and real-valued (sum p(s) s), in one Serve app with all of them as members.
- ``JudgeGate``: the run's judge on a preference set made another way (``alma_ray.judge.preferences``): what the
  gate (``judge.min_accuracy``) compares.
- ``ReusedJudge``: a judge built earlier by the same inputs, taken from the cache (``alma_ray.judge.cache``)
  instead of the build's stages.

``distill_rows`` turns the fine-tuned judge's scores of the distill pairs into self-distillation targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray.data

from alma_ray.config import JudgeBuildConfig, JudgeConfig
from alma_ray.engines.registry import Engines
from alma_ray.judge.annotations import (
    DEMO,
    LONGER,
    accuracy_by_kind,
    demo_annotations,
    load_annotations,
    pairwise_accuracy,
    preference_pairs,
    prefers_longer,
    split_by_question,
)
from alma_ray.judge.cache import META, copy_judge
from alma_ray.judge.serve import Panel, score_dataset
from alma_ray.stages.base import Stage, write_pylist
from alma_ray.store import StageOutput, file_digest, text_digest
from alma_ray.train.data import one_hot_ratings


@dataclass
class Annotations(Stage):
    """The judge's annotations, each row with its ``split`` (train or heldout), ``method`` and ``source``."""

    build: JudgeBuildConfig
    seed: int
    name: str = "annotations"
    empty_hint: str = "the annotation file has no rows"

    def sources(self) -> dict[str, str]:
        """The annotation file's bytes (the demo set is made by code from the seed)."""
        path = Path(self.build.annotations).expanduser()
        return {"annotations": file_digest(path)} if self.build.annotations != DEMO and path.is_file() else {}

    def write(self, data: Any, out: Path) -> StageOutput:
        b = self.build
        rows = demo_annotations(self.seed) if b.annotations == DEMO else load_annotations(b.annotations)
        train, held = split_by_question(rows, b.heldout, seed=self.seed)
        write_pylist([{**r, "split": "train"} for r in train] + [{**r, "split": "heldout"} for r in held], out)
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["method"]] = methods.get(r["method"], 0) + 1
        return self.counted(len(rows), train=len(train), heldout=len(held), methods=methods,
                            heldout_pairs=len(preference_pairs(held)), source=b.annotations)


@dataclass
class HeldoutAccuracy(Stage):
    """Pairwise accuracy of every judge in ``models`` (name -> folder) on the held-out preference pairs."""

    judge: JudgeConfig
    models: dict[str, str]
    held_rows: list[dict[str, Any]]
    engines: Engines
    name: str = "judge_eval"

    def loads(self) -> list[str]:
        return list(self.models.values())

    def sources(self) -> dict[str, str]:
        return {"heldout_pairs": text_digest(self.held_rows)}

    def write(self, data: Any, out: Path) -> StageOutput:
        table = heldout_accuracy(Panel.compare(self.judge, self.models), self.held_rows, self.engines)
        write_pylist(table, out)
        (out / "accuracy.json").write_text(json.dumps(table, indent=1))
        return self.counted(len(table), table=table)


def heldout_accuracy(panel: Panel, held_rows: list[dict[str, Any]], engines: Engines) -> list[dict[str, Any]]:
    """Pairwise accuracy on the held-out preference pairs of every judge of ``panel``, integer and real-valued
    (the panel's app is given back afterwards)."""
    return pairs_accuracy(panel, preference_pairs(held_rows), engines, keep=False)


def pairs_accuracy(panel: Panel, pairs: list[dict[str, Any]], engines: Engines, *, keep: bool,
                   ensemble: bool = False) -> list[dict[str, Any]]:
    """Pairwise accuracy on (prompt, chosen, rejected) ``pairs`` of every judge of ``panel``, integer and
    real-valued, and of the panel's weighted score (``ensemble``: judge ``panel``), then the ``LONGER`` baseline;
    each row says how often the judge sided with the longer answer (``prefers_longer``) and, where the pairs say
    how their answers were made (``chosen_method``), its accuracy per kind of pair (``by_kind``). ``keep``: leave
    the panel's app up (the run's judge), else give it back."""
    texts = sorted({(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")})
    try:  # preference sets are small enough to collect
        scored = score_dataset(ray.data.from_items([{"prompt": p, "response": r} for p, r in texts]),
                               batch_size=panel.max_batch_size, resources=engines.resources,
                               app=engines.app(panel)).take_all()
    finally:
        if not keep:
            engines.stop_app(panel)
    lookup = {(r["prompt"], r["response"]): r for r in scored}
    columns = [(j.name, kind, key) for j in panel.judges
               for kind, key in (("integer", "member_score_ints"), ("real-valued", "member_scores"))]
    if ensemble:
        columns.append(("panel", "real-valued", "score"))
    chars = {side: np.array([len(p[side]) for p in pairs], dtype=float) for side in ("chosen", "rejected")}
    kinds = [f"{p['chosen_method']}>{p['rejected_method']}" for p in pairs] if pairs and all(
        "chosen_method" in p for p in pairs) else None
    rows = []

    def row(member: str, kind: str, chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
        acc = pairwise_accuracy(chosen, rejected)
        longer = None if kind == "length" else prefers_longer(chosen, rejected, chars["chosen"], chars["rejected"])
        out = {"judge": member, "scores": kind, **acc.row(), "prefers_longer": longer}
        if kinds is not None:
            out["by_kind"] = accuracy_by_kind(chosen > rejected, kinds)
        return out

    for member, kind, key in columns:
        def value(prompt: str, response: str, member: str = member, key: str = key) -> float:
            r = lookup[(prompt, response)]
            v = float(r["score"] if key == "score" else r[key][member])
            return float("nan") if (key == "member_score_ints" and v < 0) else v

        rows.append(row(member, kind, np.array([value(p["prompt"], p["chosen"]) for p in pairs]),
                        np.array([value(p["prompt"], p["rejected"]) for p in pairs])))
    rows.append(row(LONGER, "length", chars["chosen"], chars["rejected"]))  # what length alone would score
    return rows


@dataclass
class JudgeGate(Stage):
    """The judge gate's measurement: the run's judge (``panel``, kept up) on a preference set, per member and
    for the panel's score; the recipe compares the panel's real-valued accuracy with ``judge.min_accuracy``."""

    panel: Panel
    pairs: list[dict[str, Any]]
    engines: Engines
    set_name: str
    name: str = "judge_gate"

    def loads(self) -> list[str]:
        return self.panel.loads()

    def sources(self) -> dict[str, str]:
        return {"pairs": text_digest(self.pairs)}

    def write(self, data: Any, out: Path) -> StageOutput:
        table = pairs_accuracy(self.panel, self.pairs, self.engines, keep=True, ensemble=True)
        write_pylist(table, out)
        panel = next(r for r in table if r["judge"] == "panel")
        return self.counted(len(table), table=table, accuracy=panel["accuracy"], pairs=len(self.pairs),
                            unscored=panel["unscored"], judge=self.panel.name, preference_set=self.set_name,
                            prefers_longer=panel["prefers_longer"])


@dataclass
class ReusedJudge(Stage):
    """The cached judge filed under ``key`` (``cached``: its folder), copied into the run (hard links where the
    file system allows), with what built it: its held-out accuracy table, its stage and the run that built it."""

    key: str
    cached: Path | None
    name: str = "judge_reused"

    def sources(self) -> dict[str, str]:
        return {"judge_cache": self.key}

    def write(self, data: Any, out: Path) -> StageOutput:
        if self.cached is None:
            raise FileNotFoundError(f"no cached judge under key {self.key}")
        meta = json.loads((self.cached / META).read_text())
        copy_judge(self.cached, out)
        return self.counted(1, key=self.key, cached=str(self.cached), table=meta["table"],
                            built_stage=meta["stage"], built_by=meta["built_by"])


def distill_rows(scores: Path, target: str) -> list[dict[str, Any]]:
    """Training rows from the judge's scores of the distill pairs (flagged rows left out): the target is the
    judge's 11-way distribution as soft labels (``distribution``) or its expected score rounded (``rounded``)."""
    scored = pq.read_table(scores, columns=["prompt", "response", "score", "score_dist", "judge_flag"]).to_pylist()
    rows = []
    for r in scored:
        if r["judge_flag"]:
            continue
        dist = np.asarray(r["score_dist"], dtype=np.float32)
        label = dist / dist.sum() if target == "distribution" else one_hot_ratings([int(round(r["score"]))])[0]
        rows.append({"prompt": r["prompt"], "response": r["response"], "target": label})
    return rows
