"""The training objectives, as pure torch functions of model outputs (unit-tested against direct formulas), and the
one forward pass they share (``response_logits``: the LM head only where a loss reads it).

- ``sft``: next-token cross-entropy on response tokens only (labels are -100 on the prompt).
- ``dpo``: Rafailov et al. 2023, sigmoid loss on ``beta * ((pi_c - ref_c) - (pi_r - ref_r))`` over summed
  response log-probs, with a frozen reference model.
- ``reward``: Bradley-Terry, ``-log sigmoid(r_c - r_r)`` on a scalar head read at each sequence's last token.

- ``judge``: cross-entropy between a target distribution over the ratings 0..10 (one-hot for an annotated
  integer, the teacher's distribution for self-distillation) and the judge's own p(0..10), read exactly as the
  scorer reads it (``alma_ray.judge.rubric.score_distribution``): the rating slot, plus the slot after a "1"
  for 1 vs 10. One forward pass of (judge prompt + "1") gives both slots.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a response token in some row (``labels[:, t + 1] != -100``): the only ones
    the SFT and DPO losses read."""
    return torch.nonzero((labels[:, 1:] != IGNORE).any(0)).flatten()


def response_logits(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, positions): a causal LM's logits at ``response_positions`` only (``logits_to_keep``), for a padded
    batch (``alma_ray.train.data.pad_batch``). The LM head skips the prompt and the padding: with a large
    vocabulary (Gemma-3: 262k) it is most of a step's work (``make bench-step``)."""
    keep = response_positions(inputs["labels"])
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
    return out.logits, keep


def _next_tokens(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) aligned: each position's logits and the label of the token after it. ``keep``: the
    positions ``logits`` were computed at (``response_logits``); None: all of them."""
    if keep is None:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels[:, keep + 1]


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of log p(label_t | prefix) over the positions whose label is not -100; shape [batch]. ``keep``: the
    positions ``logits`` are at (``response_logits``); None: every position."""
    logits, targets = _next_tokens(logits, labels, keep)
    mask = targets != IGNORE
    picked = torch.gather(logits.float().log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (what HF computes from ``labels``). ``keep``: the
    positions ``logits`` are at (``response_logits``); None: every position."""
    logits, targets = _next_tokens(logits, labels, keep)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO loss from summed sequence log-probs; metrics are the implicit rewards' margin and accuracy."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    return loss, {"reward_margin": float(margin.mean().detach()),
                  "reward_accuracy": float((margin > 0).float().mean()),
                  "chosen_reward": float(chosen_reward.mean().detach())}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise reward-model loss; accuracy counts ties as wrong."""
    diff = chosen.float() - rejected.float()
    return -F.logsigmoid(diff).mean(), {"pair_accuracy": float((diff > 0).float().mean()),
                                        "reward_margin": float(diff.mean().detach())}


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values[b, last real token of b]`` for right-padded batches; ``values`` is [batch, seq] or [batch, seq, 1]."""
    if values.dim() == 3:
        values = values.squeeze(-1)
    last = attention_mask.long().sum(-1) - 1
    return values[torch.arange(values.shape[0], device=values.device), last]


def metrics_mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in sorted(keys)}


def score_logprobs(first: torch.Tensor, after_one: torch.Tensor, digits: list[int], ten: int | None
                   ) -> torch.Tensor:
    """log p(s) for s = 0..10 from the logits at the rating slot (``first``) and after a "1"; shape [batch, 11].

    Differentiable twin of ``alma_ray.judge.rubric.score_distribution`` (before its normalization): p(1) is "1"
    followed by no further digit, p(10) is "1" then "0" (plus a single "10" token where the tokenizer has one).
    """
    lp1 = first.float().log_softmax(-1)
    lp2 = after_one.float().log_softmax(-1)
    index = torch.as_tensor(digits, device=first.device)
    lpd = lp1[:, index]
    more = lp2[:, index].exp().sum(-1).clamp(max=1 - 1e-6)
    one = lpd[:, 1] + torch.log1p(-more)
    ten_lp = lpd[:, 1] + lp2[:, digits[0]]
    if ten is not None:
        ten_lp = torch.logaddexp(ten_lp, lp1[:, ten])
    return torch.cat([lpd[:, :1], one[:, None], lpd[:, 2:], ten_lp[:, None]], dim=1)


def judge_rating_loss(score_lp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """-sum_s target(s) log p(s), averaged over rows; ``target`` rows sum to 1 (one-hot or a distribution).

    p(s) is not renormalized over the 11 ratings, so the loss also moves mass from other tokens onto them.
    Metrics: the mean absolute error of the expected score, and the mass on valid ratings.
    """
    target = target.to(score_lp.dtype)
    loss = -(target * score_lp).sum(-1).mean()
    with torch.no_grad():
        probs = score_lp.exp()
        scores = torch.arange(11, dtype=probs.dtype, device=probs.device)
        expected = (probs / probs.sum(-1, keepdim=True)) @ scores
        mae = (expected - target @ scores).abs().mean()
    return loss, {"score_mae": float(mae), "score_mass": float(probs.sum(-1).mean())}
