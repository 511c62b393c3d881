"""The training objectives, as pure torch functions of model outputs (unit-tested against direct formulas).

- ``sft``: next-token cross-entropy on response tokens only (labels are -100 on the prompt).
- ``dpo``: Rafailov et al. 2023, sigmoid loss on ``beta * ((pi_c - ref_c) - (pi_r - ref_r))`` over summed
  response log-probs, with a frozen reference model.
- ``reward``: Bradley-Terry, ``-log sigmoid(r_c - r_r)`` on a scalar head read at each sequence's last token.

The judge's rating loss is ``sft`` on (judge prompt, rating) pairs: the judge learns to emit ``[[s]]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t | prefix) over the positions whose label is not -100; shape [batch]."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    picked = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (what HF computes from ``labels``)."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)


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
