"""Training examples: each worker tokenizes the raw rows of its shard (batch functions, tokenizer cached per
process) and pads per micro-batch.

Two ways rows reach the workers (``Examples``): a Ray Data dataset, streamed to each worker as an equal shard, or,
for examples that fit comfortably in memory (``SMALL_EXAMPLES_BYTES`` of parquet; ALMA's D_1..D_r are thousands of
short rows), a pyarrow table put in the object store once, of which each worker takes every world-th row. The
second skips Ray Data's split coordinator and read tasks, about 10-20 s of every training's start-up on 2 cores
(``make bench-train`` prints the split); both give each rank the same number of rows, dropping the remainder as
Ray Data's equal split does, so every rank takes the same number of steps.

SFT rows: (prompt, response) -> ``input_ids``, ``labels`` (-100 on the prompt). Preference rows: (prompt,
chosen, rejected) -> the same two columns for each side, prefixed ``chosen_`` / ``rejected_``. Prompts go through
the model's chat template when it has one, else the plain completion template; responses end with EOS.

Length bucketing (``micro_batches``): each worker reads a window of ``bucket_window`` micro-batches at a time, sorts
it by length, cuts it into micro-batches and trains on them in a seeded random order, so a micro-batch holds
sequences of similar length and padding stops being the cost. The number of micro-batches is the same as without
bucketing, so every rank takes the same number of steps.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from alma_ray.engines.build import prompt_ids, uses_chat_template
from alma_ray.store import input_path
from alma_ray.train.losses import IGNORE

Examples: TypeAlias = ray.data.Dataset | pa.Table
"""Training rows: a dataset (streamed, an equal shard per worker) or a small in-memory table (see above)."""

SMALL_EXAMPLES_BYTES = 64 << 20
"""Parquet examples up to this size on disk are read on the driver into one table instead of streamed."""


def read_examples(dirs: list[str], columns: list[str], where: list[tuple[str, str, Any]] | None = None) -> Examples:
    """The ``columns`` of committed stages' rows (in the order given, each directory's files sorted), only those
    matching ``where`` (pyarrow filters, e.g. ``[("split", "==", "train")]``): a table when they are small, else a
    lazy dataset."""
    dirs = [input_path(d) for d in dirs]  # a stage's declared inputs only
    files = [f for d in dirs for f in (sorted(Path(d).rglob("*.parquet")) if Path(d).is_dir() else [Path(d)])]
    if sum(f.stat().st_size for f in files) > SMALL_EXAMPLES_BYTES:
        expr = pq.filters_to_expression(where) if where else None
        return ray.data.read_parquet(dirs, filter=expr).select_columns(columns)
    tables = [pq.read_table(f, columns=columns, filters=where) for f in files]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({c: [] for c in columns})


def table_windows(table: pa.Table, size: int, *, rank: int = 0, world: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Windows of ``size`` rows of ``table`` as numpy columns: rows rank, rank + world, ... (an equal share: the
    remainder of ``num_rows / world`` is dropped)."""
    n = table.num_rows // world * world
    share = table.take(np.arange(rank, n, world)) if world > 1 else table
    columns = {c: share.column(c).to_numpy(zero_copy_only=False) for c in share.column_names}
    return windows(columns, size)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def encode_example(tok: Any, prompt: str, response: str, *, max_seq_len: int, completion_template: str,
                   eos: bool = True, chat: bool | None = None, keep_response: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of prompt + response and labels that are -100 everywhere but the response (and its EOS). ``chat``:
    wrap the prompt in the tokenizer's chat template (None: when it has one; False: ``completion_template``).
    Longer than ``max_seq_len``: the end is cut, or with ``keep_response`` the prompt's start (after its first
    token), so the response (a long dialogue's last turn) is what the model reads last."""
    chat = uses_chat_template(tok, chat)
    p = prompt_ids(tok, prompt, chat=chat, completion_template=completion_template)
    r = tok.encode(response if chat else " " + response, add_special_tokens=False)
    if eos:
        r = r + [tok.eos_token_id]
    if keep_response and len(p) + len(r) > max_seq_len:
        r = r[: max_seq_len - 2]
        p = p[:1] + p[len(p) - (max_seq_len - len(r) - 1):]
    ids = np.array((p + r)[:max_seq_len], dtype=np.int64)
    labels = np.array(([IGNORE] * len(p) + r)[:max_seq_len], dtype=np.int64)
    return ids, labels


def tokenize_sft(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int,
                 completion_template: str, chat: bool | None = None, keep_response: bool = False
                 ) -> dict[str, list[Any]]:
    tok = _tokenizer(model)
    out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    for prompt, response in zip(batch["prompt"], batch["response"]):
        ids, labels = encode_example(tok, str(prompt), str(response), max_seq_len=max_seq_len,
                                     completion_template=completion_template, chat=chat,
                                     keep_response=keep_response)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
    return out


def tokenize_pairs(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int, completion_template: str,
                   eos: bool = True, chat: bool | None = None, keep_response: bool = False) -> dict[str, list[Any]]:
    """(prompt, chosen, rejected) rows for DPO (``eos=True``) and the reward model (``eos=False``: the scalar
    head reads the last response token)."""
    tok = _tokenizer(model)
    out: dict[str, list[Any]] = {f"{side}_{k}": [] for side in ("chosen", "rejected") for k in ("input_ids", "labels")}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = encode_example(tok, str(prompt), str(response), max_seq_len=max_seq_len,
                                         completion_template=completion_template, eos=eos, chat=chat,
                                         keep_response=keep_response)
            out[f"{side}_input_ids"].append(ids)
            out[f"{side}_labels"].append(labels)
    return out


def tokenize_judge(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int, chat: bool | None,
                   max_response_chars: int) -> dict[str, list[Any]]:
    """(prompt, response, target) rows for the judge's rating loss: the judge prompt up to the rating slot plus
    a "1" (``input_ids``), the rating slot's index (``rating_pos``) and the 11-way target (one-hot or soft)."""
    from alma_ray.judge.rubric import ScoreTokens, judge_prompt_ids

    tok = _tokenizer(model)
    one = ScoreTokens.from_tokenizer(tok).digits[1]
    use_chat = uses_chat_template(tok, chat)
    out: dict[str, list[Any]] = {"input_ids": [], "rating_pos": [], "target": []}
    for prompt, response, target in zip(batch["prompt"], batch["response"], batch["target"]):
        ids = judge_prompt_ids(tok, str(prompt), str(response)[:max_response_chars], chat=use_chat)
        if len(ids) + 1 > max_seq_len:
            raise ValueError(f"a judge example is {len(ids) + 1} tokens, over train.max_seq_len={max_seq_len}; "
                             "raise train.max_seq_len or lower judge.max_response_chars")
        t = np.asarray(target, dtype=np.float32)
        if t.shape != (11,) or not np.isclose(t.sum(), 1.0, atol=1e-3) or (t < 0).any():
            raise ValueError(f"judge target must be 11 probabilities over the ratings 0..10, got {target!r}")
        out["input_ids"].append(np.array(ids + [one], dtype=np.int64))
        out["rating_pos"].append(len(ids) - 1)
        out["target"].append(t)
    return out


class ReferenceLogprobs:
    """Ray Data actor: DPO's frozen reference, run once over the raw pairs (``train.dpo_reference``).

    Adds ``chosen_ref_logp`` and ``rejected_ref_logp`` to the rows: summed response log-probs under the reference
    model of the pairs as ``tokenize`` (the objective's batch function, the one the workers use) encodes them, the
    same ``sequence_logprobs`` the online path computes inside the training step.
    """

    def __init__(self, model: str, pad_id: int, tokenize: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval().to(self.device)
        self.pad_id = pad_id
        self.tokenize = tokenize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        from alma_ray.train.losses import response_logits, sequence_logprobs

        out: dict[str, Any] = dict(batch)
        tokens = self.tokenize(batch)
        for side in ("chosen", "rejected"):
            inputs = pad_batch(tokens[f"{side}_input_ids"], tokens[f"{side}_labels"], self.pad_id, self.device)
            with torch.no_grad():
                logits, keep = response_logits(self.model, inputs)
            out[f"{side}_ref_logp"] = sequence_logprobs(logits, inputs["labels"], keep).double().cpu().numpy()
        return out


def one_hot_ratings(scores: Iterable[int]) -> list[np.ndarray]:
    """Integer ratings 0..10 as judge training targets."""
    out = []
    for s in scores:
        if not 0 <= int(s) <= 10:
            raise ValueError(f"a rating must be an integer in 0..10, got {s!r}")
        out.append(np.eye(11, dtype=np.float32)[int(s)])
    return out


GPU_PAD_MULTIPLE = 64
"""On a GPU a micro-batch's width is rounded up to a multiple of this, so that the attention kernels meet a few
shapes rather than a new one at every step (docs/training.md, "On a GPU")."""


def batch_width(lengths: list[int], device: Any = None) -> int:
    """A micro-batch's padded width: its longest sequence, on a GPU rounded up to ``GPU_PAD_MULTIPLE``."""
    import torch

    width = max(lengths)
    if device is not None and torch.device(device).type == "cuda":
        width = -(-width // GPU_PAD_MULTIPLE) * GPU_PAD_MULTIPLE
    return width


def pad_batch(input_ids: list[np.ndarray], labels: list[np.ndarray], pad_id: int, device: Any = None
              ) -> dict[str, Any]:
    """Right-pad a list of sequences to the batch's longest (on a GPU rounded up to ``GPU_PAD_MULTIPLE``), on
    ``device`` (None: the CPU): input_ids, labels (-100 on padding), attention_mask."""
    import torch

    ids = torch.full((len(input_ids), batch_width([len(x) for x in input_ids], device)), pad_id, dtype=torch.long)
    lab = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "labels": lab, "attention_mask": mask}
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


def row_lengths(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Each row's padded width: its sequence length (SFT) or the longer of chosen and rejected (pairs)."""
    keys = [k for k in ("input_ids", "chosen_input_ids", "rejected_input_ids") if k in batch]
    return np.max([[len(x) for x in batch[k]] for k in keys], axis=0)


def micro_batches(windows: Iterable[dict[str, np.ndarray]], *, micro_batch: int, rng: np.random.Generator,
                  bucket: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Cut each window (a batch of several micro-batches' rows) into micro-batches of similar length, shuffled."""
    for window in windows:
        n = len(next(iter(window.values())))
        order = np.argsort(row_lengths(window), kind="stable") if bucket else np.arange(n)
        chunks = [order[i : i + micro_batch] for i in range(0, n, micro_batch)]
        for j in (rng.permutation(len(chunks)) if bucket else range(len(chunks))):
            yield {k: v[chunks[j]] for k, v in window.items()}


def as_columns(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Tokenized lists as the object-array columns Ray Data hands a worker (variable-length sequences)."""
    out = {}
    for key, values in rows.items():
        out[key] = np.empty(len(values), dtype=object)
        out[key][:] = values
    return out


def windows(columns: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of ``size`` rows, as a worker's ``iter_batches(batch_size=size)`` yields them."""
    n = len(next(iter(columns.values())))
    return ({k: v[i : i + size] for k, v in columns.items()} for i in range(0, n, size))


def padding_fraction(lengths: np.ndarray, micro_batch: int, *, window: int, seed: int = 0) -> float:
    """The share of padding in the micro-batches that ``micro_batches`` cuts from rows of these lengths, in order
    (``window=1``: no bucketing)."""
    rows = as_columns({"input_ids": [np.zeros(n, dtype=np.int64) for n in lengths]})
    real = cells = 0
    for mb in micro_batches(windows(rows, micro_batch * window), micro_batch=micro_batch,
                            rng=np.random.default_rng(seed), bucket=window > 1):
        widths = [len(x) for x in mb["input_ids"]]
        real += sum(widths)
        cells += max(widths) * len(widths)
    return 1 - real / cells
