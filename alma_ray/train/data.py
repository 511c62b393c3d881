"""Training examples: Ray Data tokenizes (a task function, tokenizer cached per worker); workers pad per batch.

SFT rows: (prompt, response) -> ``input_ids``, ``labels`` (-100 on the prompt). Preference rows: (prompt,
chosen, rejected) -> the same two columns for each side, prefixed ``chosen_`` / ``rejected_``. Prompts go through
the model's chat template when it has one, else the plain completion template; responses end with EOS.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from alma_ray.engine import prompt_ids, uses_chat_template
from alma_ray.train.losses import IGNORE


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def encode_example(tok: Any, prompt: str, response: str, *, max_seq_len: int, completion_template: str,
                   eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of prompt + response and labels that are -100 everywhere but the response (and its EOS)."""
    chat = uses_chat_template(tok, None)
    p = prompt_ids(tok, prompt, chat=chat, completion_template=completion_template)
    r = tok.encode(response if chat else " " + response, add_special_tokens=False)
    if eos:
        r = r + [tok.eos_token_id]
    ids = np.array((p + r)[:max_seq_len], dtype=np.int64)
    labels = np.array(([IGNORE] * len(p) + r)[:max_seq_len], dtype=np.int64)
    return ids, labels


def tokenize_sft(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int,
                 completion_template: str) -> dict[str, list[Any]]:
    tok = _tokenizer(model)
    out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    for prompt, response in zip(batch["prompt"], batch["response"]):
        ids, labels = encode_example(tok, str(prompt), str(response), max_seq_len=max_seq_len,
                                     completion_template=completion_template)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
    return out


def tokenize_pairs(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int, completion_template: str,
                   eos: bool = True) -> dict[str, list[Any]]:
    """(prompt, chosen, rejected) rows for DPO (``eos=True``) and the reward model (``eos=False``: the scalar
    head reads the last response token)."""
    tok = _tokenizer(model)
    out: dict[str, list[Any]] = {f"{side}_{k}": [] for side in ("chosen", "rejected") for k in ("input_ids", "labels")}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = encode_example(tok, str(prompt), str(response), max_seq_len=max_seq_len,
                                         completion_template=completion_template, eos=eos)
            out[f"{side}_input_ids"].append(ids)
            out[f"{side}_labels"].append(labels)
    return out


def pad_batch(input_ids: list[np.ndarray], labels: list[np.ndarray], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of sequences to the batch's longest: input_ids, labels (-100 on padding), attention_mask."""
    import torch

    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        ids[i, : len(x)] = torch.as_tensor(x)
        lab[i, : len(y)] = torch.as_tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": mask}
