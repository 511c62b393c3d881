"""Preference sets for the judge gate: (prompt, chosen, rejected) pairs the judge must order right before it may
select data (``judge.min_accuracy``).

A source is a JSONL or parquet file of ``prompt``/``chosen``/``rejected`` rows, or ``embedded:<name>``:

- ``tiny-preferences``: 12 pairs written for alma_ray by its developers (``alma_ray/data/tiny_preferences.jsonl``):
  the rejected answer is plausible but wrong (a false fact, a missed instruction), written by hand for each
  prompt, not made by the demo annotations' procedure from a reference answer (truncated, shuffled, off topic, its
  numbers changed: ``alma_ray.judge.annotations``). Not judged by independent people: a smoke gate, labelled as
  such on every row.

- ``mt-bench-synthetic``: the held-out style pairs of the synthetic MT-Bench annotations
  (``alma_ray.judge.annotations``: every two variants of a question with different scores). Made by the same
  procedure as the judge's demo annotations, so never a fair gate for a judge trained on them; ALMoST's reward
  model checks itself on them (it never saw them).

Each pair keeps ``source`` and ``origin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alma_ray.errors import AlmaError
from alma_ray.records import read_records

TINY_PREFERENCES = Path(__file__).resolve().parent.parent / "data" / "tiny_preferences.jsonl"
EMBEDDED = {"tiny-preferences": (TINY_PREFERENCES, "written for alma_ray by its developers (not independent "
                                                   "human judgments): plausible but wrong rejected answers")}


SYNTHETIC = "mt-bench-synthetic"


def synthetic_pairs(source: str) -> list[dict[str, Any]]:
    """The synthetic MT-Bench preference pairs (see the module doc), labelled as such."""
    from alma_ray.judge.annotations import demo_annotations, preference_pairs

    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "source": source,
             "origin": f"synthetic: MT-Bench {p['chosen_method']} over {p['rejected_method']} "
                       "(alma_ray.judge.annotations)"} for p in preference_pairs(demo_annotations())]


class PreferenceError(AlmaError, ValueError):
    """A preference file that cannot be used; the message names the file and line."""


def load_preferences(sources: list[str]) -> list[dict[str, Any]]:
    """Every pair of every source, checked field by field."""
    pairs = []
    for source in sources:
        if source.startswith("embedded:"):
            name = source.removeprefix("embedded:")
            if name not in EMBEDDED and name != SYNTHETIC:
                raise PreferenceError(f"unknown embedded preference set {source!r}; known: "
                                      + ", ".join(f"embedded:{k}" for k in [*EMBEDDED, SYNTHETIC]))
            if name == SYNTHETIC:
                pairs += synthetic_pairs(source)
                continue
            path, origin = EMBEDDED[name]
        else:
            path, origin = Path(source).expanduser(), f"preference file {source}"
        for where, row in read_records(path, PreferenceError):
            for key in ("prompt", "chosen", "rejected"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise PreferenceError(f"{where}: '{key}' must be a non-empty string (give prompt, chosen, "
                                          "rejected)")
            pairs.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                          "source": source, "origin": str(row.get("origin", origin))})
    if not pairs:
        raise PreferenceError(f"no preference pairs in {sources}")
    return pairs
