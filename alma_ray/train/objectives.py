"""Training objectives as objects: each declares its columns, tokenization, model loading and loss in one place,
and one worker step (``alma_ray.train.loop.Worker``) serves them all, so they cannot drift apart.

- ``SFT``: next-token loss on the response (``prompt``, ``response``).
- ``DPO``: the DPO loss against a frozen reference (``prompt``, ``chosen``, ``rejected``); the reference's log-probs
  are precomputed in a Ray Data pass before training (default) or computed in every step ("online").
- ``Reward``: a Bradley-Terry scalar head on the last response token (``prompt``, ``chosen``, ``rejected``).
- ``JudgeRating``: the judge's rating loss over the 11 ratings (``prompt``, ``response``, ``target``: one-hot or
  soft targets).

``loss(engine, reference, batch, pad_id)`` returns (loss, metrics, real tokens, padded cells) of one micro-batch.
Objects are frozen dataclasses: Ray Train pickles them to every worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import ActorPoolStrategy

from alma_ray.config import ResourcesConfig, TrainConfig
from alma_ray.errors import StageInputError
from alma_ray.train.data import (
    Examples,
    ReferenceLogprobs,
    as_columns,
    pad_batch,
    tokenize_judge,
    tokenize_pairs,
    tokenize_sft,
)

DEFAULT_TEMPLATE = "User: {prompt}\nAssistant:"
Step = tuple[Any, dict[str, float], int, int]


def _causal_lm(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@dataclass(frozen=True)
class Objective:
    """What every objective declares; subclasses set ``name`` and ``columns`` and implement ``tokenize``/``loss``."""

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()
    sequences: ClassVar[int] = 1
    """Sequences a row puts through the model (a training's memory: ``alma_ray.placement.training_bytes``)."""
    logit_positions: ClassVar[int | None] = None
    """Positions a row's loss reads logits at (None: every one)."""

    def check(self, examples: Examples) -> None:
        have = examples.column_names if isinstance(examples, pa.Table) else examples.columns()
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise StageInputError(f"{self.name} training needs columns {list(self.columns)}; missing {missing}")

    def tokenizer_fn(self, *, model: str, max_seq_len: int) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
        """The batch function that tokenizes this objective's rows (``alma_ray.train.data``), bound to its options."""
        raise NotImplementedError

    def prepare(self, examples: Examples, *, model: str, max_seq_len: int, resources: ResourcesConfig) -> Examples:
        """What the workers read: the objective's raw columns (each worker tokenizes its own shard, with the
        tokenizer it has loaded anyway: no Ray Data pass, no fresh process importing transformers)."""
        if isinstance(examples, pa.Table):
            return examples.select(list(self.columns))
        return examples.select_columns(list(self.columns))

    def encode(self, batch: dict[str, np.ndarray], *, model: str, max_seq_len: int) -> dict[str, np.ndarray]:
        """A window of raw rows as the columns ``loss`` reads (token ids per side; other columns kept)."""
        tokenized = self.tokenizer_fn(model=model, max_seq_len=max_seq_len)(batch)
        kept = {k: v for k, v in batch.items() if k not in self.columns and k not in tokenized}
        return {**as_columns(tokenized), **kept}

    def load_model(self, path: str, pad_id: int) -> Any:
        return _causal_lm(path)

    def load_reference(self, model: str, pad_id: int) -> Any:
        """A frozen model every step needs beside the trained one (DPO online), or None."""
        return None

    def bind(self, tokenizer: Any) -> Objective:
        """This objective with what it needs from the model's tokenizer (the judge's rating tokens)."""
        return self

    def loss(self, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int) -> Step:
        raise NotImplementedError


@dataclass(frozen=True)
class SFT(Objective):
    name: ClassVar[str] = "sft"
    columns: ClassVar[tuple[str, ...]] = ("prompt", "response")
    completion_template: str = DEFAULT_TEMPLATE
    chat: bool | None = None
    """Wrap prompts in the tokenizer's chat template: None when it has one; False: ``completion_template``."""
    keep_response: bool = False
    """Too long: cut the prompt's start instead of the response's end (``encode_example``)."""

    def tokenizer_fn(self, *, model: str, max_seq_len: int) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
        return functools.partial(tokenize_sft, model=model, max_seq_len=max_seq_len,
                                 completion_template=self.completion_template, chat=self.chat,
                                 keep_response=self.keep_response)

    def loss(self, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int) -> Step:
        from alma_ray.train.losses import response_logits, sft_loss

        inputs = pad_batch(list(batch["input_ids"]), list(batch["labels"]), pad_id, engine.device)
        logits, keep = response_logits(engine, inputs)
        mask = inputs["attention_mask"]
        return sft_loss(logits, inputs["labels"], keep), {}, int(mask.sum()), mask.numel()


@dataclass(frozen=True)
class _Pairs(Objective):
    """Preference pairs: chosen and rejected tokenized side by side and run in one forward pass."""

    columns: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected")
    eos: ClassVar[bool] = True
    completion_template: str = DEFAULT_TEMPLATE
    chat: bool | None = None
    """Wrap prompts in the tokenizer's chat template: None when it has one; False: ``completion_template``."""
    keep_response: bool = False
    """Too long: cut the prompt's start instead of the response's end (``encode_example``)."""

    def tokenizer_fn(self, *, model: str, max_seq_len: int) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
        return functools.partial(tokenize_pairs, model=model, max_seq_len=max_seq_len,
                                 completion_template=self.completion_template, eos=self.eos, chat=self.chat,
                                 keep_response=self.keep_response)

    @staticmethod
    def both(batch: dict[str, Any], pad_id: int, device: Any) -> tuple[int, dict[str, Any]]:
        """(pairs, inputs): rows [:pairs] are the chosen sides, [pairs:] the rejected."""
        n = len(batch["chosen_input_ids"])
        inputs = pad_batch([*batch["chosen_input_ids"], *batch["rejected_input_ids"]],
                           [*batch["chosen_labels"], *batch["rejected_labels"]], pad_id, device)
        return n, inputs


@dataclass(frozen=True)
class DPO(_Pairs):
    name: ClassVar[str] = "dpo"
    beta: float = 0.1
    precompute: bool = True
    """Reference log-probs in a Ray Data pass before training (True) or in every step (False)."""
    sequences: ClassVar[int] = 2  # chosen and rejected
    reference: str | None = None
    """The frozen reference's folder; None: the model being trained (the usual choice)."""

    @classmethod
    def of(cls, train: TrainConfig, *, completion_template: str, reference: str | None = None) -> DPO:
        return cls(completion_template=completion_template, beta=train.dpo_beta,
                   precompute=train.dpo_reference == "precomputed", reference=reference)

    def prepare(self, examples: Examples, *, model: str, max_seq_len: int, resources: ResourcesConfig) -> Examples:
        raw = super().prepare(examples, model=model, max_seq_len=max_seq_len, resources=resources)
        if not self.precompute:
            return raw
        if isinstance(raw, pa.Table):
            raw = ray.data.from_arrow(raw)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        # A pass of its own before training, on the devices training will use next (materialized: the object
        # store spills to disk), rather than streaming beside training and competing for them. It adds the two
        # log-prob columns to the raw rows; the workers tokenize the same way (``encode``).
        return raw.map_batches(
            ReferenceLogprobs, batch_size=16, compute=ActorPoolStrategy(size=resources.train_workers),
            fn_constructor_kwargs=dict(model=self.reference or model,
                                       pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                       tokenize=self.tokenizer_fn(model=model, max_seq_len=max_seq_len)),
            num_gpus=1 if resources.use_gpu else 0,
            num_cpus=0 if resources.use_gpu else resources.cpus_per_train_worker,
        ).materialize()

    def load_reference(self, model: str, pad_id: int) -> Any:
        if self.precompute:
            return None
        reference = _causal_lm(self.reference or model)
        return reference.eval().requires_grad_(False)

    def loss(self, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int) -> Step:
        import torch

        from alma_ray.train.losses import dpo_loss, response_logits, sequence_logprobs

        n, inputs = self.both(batch, pad_id, engine.device)
        mask = inputs["attention_mask"]
        logits, keep = response_logits(engine, inputs)
        logp = sequence_logprobs(logits, inputs["labels"], keep)
        if reference is None:  # precomputed by ReferenceLogprobs before training
            ref = torch.as_tensor(np.concatenate([np.asarray(batch["chosen_ref_logp"], dtype=np.float64),
                                                  np.asarray(batch["rejected_ref_logp"], dtype=np.float64)]),
                                  device=logp.device, dtype=logp.dtype)
        else:
            with torch.no_grad():
                logits, keep = response_logits(reference, inputs)
                ref = sequence_logprobs(logits, inputs["labels"], keep)
        loss, metrics = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], beta=self.beta)
        return loss, metrics, int(mask.sum()), mask.numel()


@dataclass(frozen=True)
class Reward(_Pairs):
    name: ClassVar[str] = "reward"
    eos: ClassVar[bool] = False  # the scalar head reads the last response token

    def load_model(self, path: str, pad_id: int) -> Any:
        import torch
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = pad_id
        return model

    def loss(self, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int) -> Step:
        from alma_ray.train.losses import bradley_terry_loss, last_token_values

        n, inputs = self.both(batch, pad_id, engine.device)
        mask = inputs["attention_mask"]
        module = engine.module
        hidden = module.base_model(input_ids=inputs["input_ids"], attention_mask=mask)
        values = last_token_values(module.score(hidden.last_hidden_state), mask)
        loss, metrics = bradley_terry_loss(values[:n], values[n:])
        return loss, metrics, int(mask.sum()), mask.numel()


@dataclass(frozen=True)
class JudgeRating(Objective):
    name: ClassVar[str] = "judge"
    columns: ClassVar[tuple[str, ...]] = ("prompt", "response", "target")
    logit_positions: ClassVar[int | None] = 2
    """Positions a row's loss reads logits at: the rating slot and the slot after a "1"."""
    chat: bool | None = None
    max_response_chars: int = 4000
    score_tokens: Any = None
    """The tokenizer's rating-digit ids (``alma_ray.judge.rubric.ScoreTokens``), bound on each worker."""

    def tokenizer_fn(self, *, model: str, max_seq_len: int) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
        return functools.partial(tokenize_judge, model=model, max_seq_len=max_seq_len, chat=self.chat,
                                 max_response_chars=self.max_response_chars)

    def bind(self, tokenizer: Any) -> Objective:
        from alma_ray.judge.rubric import ScoreTokens

        return replace(self, score_tokens=ScoreTokens.from_tokenizer(tokenizer))

    def loss(self, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int) -> Step:
        """The rating slot and the slot after "1", from one pass over (judge prompt + "1")."""
        import torch

        from alma_ray.train.losses import judge_rating_loss, score_logprobs

        inputs = pad_batch(list(batch["input_ids"]), list(batch["input_ids"]), pad_id, engine.device)
        mask = inputs["attention_mask"]
        pos = torch.as_tensor(np.asarray(batch["rating_pos"], dtype=np.int64), device=engine.device)
        # The LM head runs only at the positions some row reads (its rating slot and the slot after it), not over
        # the whole judge prompt: with a large vocabulary (Gemma-3: 262k) the head is most of a step's work.
        keep = torch.unique(torch.cat([pos, pos + 1]))
        logits = engine(input_ids=inputs["input_ids"], attention_mask=mask, logits_to_keep=keep).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        at = torch.searchsorted(keep, pos)
        tokens = self.score_tokens
        score_lp = score_logprobs(logits[rows, at], logits[rows, at + 1], tokens.digits, tokens.ten)
        target = torch.as_tensor(np.stack(batch["target"]), device=logits.device)
        loss, metrics = judge_rating_loss(score_lp, target)
        return loss, metrics, int(mask.sum()), mask.numel()


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SFT, DPO, Reward, JudgeRating)}
