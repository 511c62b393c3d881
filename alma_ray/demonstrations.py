"""Demonstration dialogues for ALMoST's vanilla configurations, and the dialogue format every ALMoST prompt uses.

A configuration prompts a model with a preamble and the first ``shots`` dialogues of a set, then the query:
``Human: {query}\\n\\nAssistant:`` (ALMoST's format). A set is a JSONL file, one dialogue per line:
``{"dialogue": [{"role": "human", "text": ...}, {"role": "assistant", "text": ...}, ...]}`` (turns alternate,
human first, assistant last), or ``embedded:<name>``:

- ``hhh``: 8 short, plain helpful-honest-harmless dialogues (``alma_ray/data/demos_hhh.jsonl``);
- ``faithful``: 3 longer, detailed, list-structured dialogues (``alma_ray/data/demos_faithful.jsonl``).

Both were written for alma_ray by its developers (not taken from ALMoST or any aligned model); every response
row names its set and configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alma_ray.errors import AlmaError
from alma_ray.records import read_records

DATA = Path(__file__).parent / "data"
EMBEDDED = {"hhh": DATA / "demos_hhh.jsonl", "faithful": DATA / "demos_faithful.jsonl"}
ORIGIN = "written for alma_ray by its developers"
PREAMBLE = ("Below are dialogues between people and an AI assistant. The assistant is helpful, honest and harmless: "
            "it answers what was asked, says so when it does not know, and declines to help with harm.")
HUMAN, ASSISTANT = "Human:", "Assistant:"
TURN_STOP = [f"\n\n{HUMAN}", HUMAN, f"\n\n{ASSISTANT}"]
"""Where a sampled assistant turn ends: the model starting the next speaker's line."""
USER_STOP = [f"\n\n{ASSISTANT}", ASSISTANT, f"\n\n{HUMAN}"]
DIALOGUE_TEMPLATE = HUMAN + " {prompt}\n\n" + ASSISTANT
"""How a (prompt, response) row reads to the reward model and in SFT: the dialogue format."""

Dialogue = list[dict[str, str]]


class DemonstrationError(AlmaError, ValueError):
    """A demonstration file that does not parse into dialogues; the message names the file and line."""


def load_demonstrations(source: str) -> list[Dialogue]:
    """The dialogues of one set, checked line by line (roles alternate, human first, assistant last)."""
    if source.startswith("embedded:"):
        name = source.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DemonstrationError(f"unknown demonstration set {source!r}; known: "
                                     + ", ".join(f"embedded:{k}" for k in EMBEDDED))
        path = EMBEDDED[name]
    else:
        path = Path(source).expanduser()
    hint = ': each line is {"dialogue": [{"role": "human", "text": ...}, {"role": "assistant", "text": ...}]}'
    out = []
    for where, row in read_records(path, DemonstrationError, hint=hint):
        turns = row.get("dialogue")
        if not isinstance(turns, list) or not turns:
            raise DemonstrationError(f"{where}: 'dialogue' must be a non-empty list of turns{hint}")
        for i, turn in enumerate(turns):
            want = "human" if i % 2 == 0 else "assistant"
            if not isinstance(turn, dict) or turn.get("role") != want:
                raise DemonstrationError(f"{where}: turn {i + 1} must have role {want!r} (turns alternate, human "
                                         f"first){hint}")
            if not isinstance(turn.get("text"), str) or not turn["text"].strip():
                raise DemonstrationError(f"{where}: turn {i + 1} needs a non-empty 'text'")
        if len(turns) % 2:
            raise DemonstrationError(f"{where}: the dialogue ends on a human turn; it must end with the assistant's")
        out.append([{"role": t["role"], "text": t["text"].strip()} for t in turns])
    if not out:
        raise DemonstrationError(f"{path}: no dialogues")
    return out


def render(turns: Dialogue) -> str:
    """A dialogue in ALMoST's format: ``Human: ...\\n\\nAssistant: ...``."""
    return "\n\n".join(f"{HUMAN if t['role'] == 'human' else ASSISTANT} {t['text']}" for t in turns)


def prompted(demos: list[Dialogue], shots: int, turns: Dialogue, next_role: str = "assistant") -> str:
    """What a configuration's model sees: the preamble, its first ``shots`` demonstrations, the dialogue so far,
    and the slot of the next speaker."""
    parts = [PREAMBLE, *(render(d) for d in demos[:shots]), render(turns)]
    slot = ASSISTANT if next_role == "assistant" else HUMAN
    return "\n\n".join(p for p in parts if p) + f"\n\n{slot}"


def as_prompt(turns: Dialogue) -> str:
    """The ``prompt`` under ``DIALOGUE_TEMPLATE`` that reads as the whole dialogue so far (which ends on a human
    turn): the first query, then the later turns in the dialogue format."""
    text = render(turns)
    return text.removeprefix(f"{HUMAN} ")


def check_shots(config: Any) -> None:
    """Every grid entry's demonstration set parses and holds at least its ``shots`` dialogues."""
    sets = {name: load_demonstrations(src) for name, src in config.demonstrations.items()}
    for g in config.responses.grid:
        if g.shots > len(sets[g.demos]):
            raise DemonstrationError(f"responses.grid {g.name}: shots={g.shots}, but demonstrations.{g.demos} "
                                     f"({config.demonstrations[g.demos]}) holds {len(sets[g.demos])} dialogues")
