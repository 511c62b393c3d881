"""The objectives against direct formulas, on the tiny model's real logits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from alma_ray.train.data import _tokenizer, encode_example, pad_batch, tokenize_pairs, tokenize_sft
from alma_ray.train.losses import (
    IGNORE,
    bradley_terry_loss,
    dpo_loss,
    last_token_values,
    response_logits,
    response_positions,
    sequence_logprobs,
    sft_loss,
)

TEMPLATE = "User: {prompt}\nAssistant:"


def _batch(model: str) -> dict[str, torch.Tensor]:
    tok = _tokenizer(model)
    pairs = [("Name a color.", "Blue is a color."), ("Count to three.", "one two three"),
             ("Say hi.", "hi"), ("Describe rain.", "Rain falls from clouds in drops.")]
    enc = [encode_example(tok, p, r, max_seq_len=64, completion_template=TEMPLATE) for p, r in pairs]
    return pad_batch([e[0] for e in enc], [e[1] for e in enc], tok.eos_token_id)


def _manual_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    out = []
    for b in range(labels.shape[0]):
        total = 0.0
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                total += float(torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]])
        out.append(total)
    return out


@pytest.fixture(scope="module")
def model(tiny_model: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def logits_and_batch(tiny_model: str, model: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = _batch(tiny_model)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits, batch


def test_sequence_logprobs_sum_response_tokens_only(logits_and_batch: tuple) -> None:
    logits, batch = logits_and_batch
    np.testing.assert_allclose(sequence_logprobs(logits, batch["labels"]).numpy(),
                               _manual_logprobs(logits, batch["labels"]), rtol=1e-5)


def test_sft_loss_ignores_prompt_tokens(tiny_model: str, logits_and_batch: tuple) -> None:
    logits, batch = logits_and_batch
    labels = batch["labels"]
    counted = int((labels[:, 1:] != IGNORE).sum())
    expected = -sum(_manual_logprobs(logits, labels)) / counted
    assert float(sft_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)
    # The prompt (and padding) never carries loss: every label before the response is -100.
    out = tokenize_sft({"prompt": np.array(["Name a color."]), "response": np.array(["the sky is blue"])},
                       model=tiny_model, max_seq_len=64, completion_template=TEMPLATE)
    tok = _tokenizer(tiny_model)
    ids, labels = out["input_ids"][0], out["labels"][0]
    start = int(np.argmax(labels != IGNORE))
    assert start > 3 and (labels[:start] == IGNORE).all() and (labels[start:] == ids[start:]).all()
    assert tok.decode(labels[start:-1]).strip() == "the sky is blue" and labels[-1] == tok.eos_token_id
    assert "ame a color." in tok.decode(ids[:start])  # the prompt, as the tiny vocabulary spells it


def test_the_lm_head_runs_only_where_a_loss_reads_and_the_losses_are_the_same(
        logits_and_batch: tuple, model: Any) -> None:
    """``response_logits`` skips the prompt and the padding (their labels are -100 in every row); the SFT loss, its
    gradient and the sequence log-probs come out as from the full logits."""
    logits, batch = logits_and_batch
    labels = batch["labels"]
    keep = response_positions(labels)
    read = [t for t in range(labels.shape[1] - 1) if any(labels[b, t + 1] != IGNORE for b in range(len(labels)))]
    assert keep.tolist() == read and len(read) < labels.shape[1] - 1  # the prompts share a start: it is skipped
    with torch.no_grad():
        kept, at = response_logits(model, batch)
    assert torch.equal(at, keep) and kept.shape[1] == len(keep)
    np.testing.assert_allclose(sequence_logprobs(kept, labels, keep).numpy(),
                               sequence_logprobs(logits, labels).numpy(), rtol=1e-5)
    assert float(sft_loss(kept, labels, keep)) == pytest.approx(float(sft_loss(logits, labels)), rel=1e-5)
    grads = []
    for kept_only in (True, False):
        model.zero_grad(set_to_none=True)
        if kept_only:
            out, at = response_logits(model, batch)
            sft_loss(out, labels, at).backward()
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            sft_loss(out, labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)


@pytest.mark.gpu
def test_the_losses_on_a_gpu_equal_the_cpu_ones(logits_and_batch: tuple, model: Any) -> None:
    """On CUDA (fp32), the kept positions, the SFT loss and the sequence log-probs are the CPU's."""
    import copy

    logits, batch = logits_and_batch
    cuda = copy.deepcopy(model).to("cuda")
    on_gpu = {k: v.to("cuda") for k, v in batch.items()}
    with torch.no_grad():
        kept, at = response_logits(cuda, on_gpu)
    labels = on_gpu["labels"]
    assert at.cpu().tolist() == response_positions(batch["labels"]).tolist()
    assert float(sft_loss(kept, labels, at)) == pytest.approx(float(sft_loss(logits, batch["labels"])), rel=1e-4)
    np.testing.assert_allclose(sequence_logprobs(kept, labels, at).cpu().numpy(),
                               sequence_logprobs(logits, batch["labels"]).numpy(), rtol=1e-4)


def test_dpo_loss_equals_the_formula(logits_and_batch: tuple) -> None:
    logits, batch = logits_and_batch
    lp = sequence_logprobs(logits, batch["labels"])
    ref = lp + torch.tensor([0.3, -0.2, 0.1, 0.5])  # a reference that differs from the policy
    beta = 0.1
    loss, metrics = dpo_loss(lp[:2], lp[2:], ref[:2], ref[2:], beta=beta)
    manual = [beta * ((float(lp[i]) - float(ref[i])) - (float(lp[2 + i]) - float(ref[2 + i]))) for i in range(2)]
    expected = sum(math.log1p(math.exp(-m)) for m in manual) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert metrics["reward_margin"] == pytest.approx(sum(manual) / 2, rel=1e-5)
    assert metrics["reward_accuracy"] == sum(m > 0 for m in manual) / 2


def test_bradley_terry_and_last_token() -> None:
    loss, metrics = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx((math.log1p(math.exp(-1.0)) + math.log(2)) / 2)
    assert metrics["pair_accuracy"] == 0.5  # a tie is not counted as right
    values = torch.arange(12.0).reshape(2, 6, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert last_token_values(values, mask).tolist() == [2.0, 11.0]


def test_pairs_tokenize_both_sides(tiny_model: str) -> None:
    batch = {"prompt": np.array(["Say hi."]), "chosen": np.array(["hi there"]), "rejected": np.array(["no"])}
    dpo = tokenize_pairs(batch, model=tiny_model, max_seq_len=64, completion_template=TEMPLATE)
    rm = tokenize_pairs(batch, model=tiny_model, max_seq_len=64, completion_template=TEMPLATE, eos=False)
    eos = _tokenizer(tiny_model).eos_token_id
    assert dpo["chosen_input_ids"][0][-1] == eos and rm["chosen_input_ids"][0][-1] != eos
    assert len(dpo["rejected_input_ids"][0]) < len(dpo["chosen_input_ids"][0])


def test_judge_score_logprobs_match_the_scorer_and_the_loss_is_cross_entropy() -> None:
    from alma_ray.judge.rubric import ScoreTokens, score_distribution
    from alma_ray.train.losses import judge_rating_loss, score_logprobs

    torch.manual_seed(0)
    for ten in (None, 40):
        tokens = ScoreTokens(digits=list(range(20, 30)), ten=ten)
        first, after = torch.randn(3, 50) * 3, torch.randn(3, 50) * 3
        lp = score_logprobs(first, after, tokens.digits, tokens.ten)
        for b in range(3):
            la, lb = first[b].double().log_softmax(-1), after[b].double().log_softmax(-1)
            wanted = tokens.digits + ([ten] if ten is not None else [])
            dist, mass = score_distribution({t: float(la[t]) for t in wanted}, {t: float(lb[t]) for t in wanted},
                                            tokens)
            assert float(lp[b].exp().sum()) == pytest.approx(mass, rel=1e-5)
            np.testing.assert_allclose((lp[b].exp() / lp[b].exp().sum()).numpy(), dist, atol=1e-6)
        soft = torch.softmax(torch.randn(3, 11), -1)
        loss, metrics = judge_rating_loss(lp, soft)
        assert float(loss) == pytest.approx(float(-(soft * lp).sum(-1).mean()), rel=1e-6)
        assert 0 <= metrics["score_mae"] <= 10 and 0 < metrics["score_mass"] <= 1


def test_judge_targets_are_checked(tiny_model: str) -> None:
    from alma_ray.train.data import one_hot_ratings, tokenize_judge

    (target,) = one_hot_ratings([10])
    assert target.argmax() == 10 and target.sum() == 1
    with pytest.raises(ValueError, match="0..10"):
        one_hot_ratings([11])
    batch = {"prompt": np.array(["hi"]), "response": np.array(["hello"]), "target": [np.full(11, 0.5)]}
    with pytest.raises(ValueError, match="11 probabilities"):
        tokenize_judge(batch, model=tiny_model, max_seq_len=1024, chat=None, max_response_chars=100)
    batch["target"] = [target]
    out = tokenize_judge(batch, model=tiny_model, max_seq_len=1024, chat=None, max_response_chars=100)
    assert out["rating_pos"][0] == len(out["input_ids"][0]) - 2  # the rating slot, then the "1"
    with pytest.raises(ValueError, match="max_seq_len"):
        tokenize_judge(batch, model=tiny_model, max_seq_len=16, chat=None, max_response_chars=100)


def test_the_judge_loss_reads_only_the_rating_slots_and_matches_the_full_logits(tiny_model: str) -> None:
    """``JudgeRating.loss`` runs the LM head at the rows' rating slots only (``logits_to_keep``); on rows of
    different lengths (padded) it must equal the loss read from the full logits."""
    from transformers import AutoModelForCausalLM

    from alma_ray.judge.rubric import ScoreTokens
    from alma_ray.train.data import one_hot_ratings, tokenize_judge
    from alma_ray.train.losses import judge_rating_loss, score_logprobs
    from alma_ray.train.objectives import JudgeRating

    tok = _tokenizer(tiny_model)
    batch = tokenize_judge({"prompt": np.array(["hi", "Name three primes and say why each is one.", "Count."]),
                            "response": np.array(["hello there", "2, 3, 5", "one two three four five six"]),
                            "target": list(one_hot_ratings([9, 2, 5]))},
                           model=tiny_model, max_seq_len=1024, chat=None, max_response_chars=100)
    assert len({len(ids) for ids in batch["input_ids"]}) == 3  # padding differs per row
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    objective = JudgeRating().bind(tok)
    loss, metrics, real, cells = objective.loss(model, None, batch, tok.eos_token_id)
    loss.backward()
    assert model.get_output_embeddings().weight.grad is not None

    ids = pad_batch(list(batch["input_ids"]), list(batch["input_ids"]), tok.eos_token_id)
    with torch.no_grad():
        full = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    rows, pos = torch.arange(3), torch.tensor(batch["rating_pos"])
    tokens = ScoreTokens.from_tokenizer(tok)
    wanted, _ = judge_rating_loss(score_logprobs(full[rows, pos], full[rows, pos + 1], tokens.digits, tokens.ten),
                                  torch.as_tensor(np.stack(batch["target"])))
    assert float(loss.detach()) == pytest.approx(float(wanted), rel=1e-5)
    assert real == sum(len(i) for i in batch["input_ids"]) and cells == 3 * max(len(i) for i in batch["input_ids"])


def test_dpo_reference_online_and_precomputed_give_the_same_loss(tiny_model: str) -> None:
    """The two ``train.dpo_reference`` modes: a reference model inside the step, or ``ReferenceLogprobs`` first."""
    from transformers import AutoModelForCausalLM

    from alma_ray.train.data import ReferenceLogprobs
    from alma_ray.train.objectives import DPO

    tok = _tokenizer(tiny_model)
    raw = {"prompt": np.array(["Name a color.", "Say hi."]), "chosen": np.array(["blue is a color", "hi there"]),
           "rejected": np.array(["no", "x"])}
    dpo = DPO(completion_template=TEMPLATE, beta=0.1)
    columns = dpo.encode(raw, model=tiny_model, max_seq_len=64)  # what a worker makes of the raw rows
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():  # move the policy away from the reference so the margins are not all zero
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    online, m_online, *_ = dpo.loss(policy, reference, columns, tok.pad_token_id)
    # the reference pass adds its log-probs to the raw rows; the worker then encodes them and keeps the log-probs
    with_ref = ReferenceLogprobs(tiny_model, tok.pad_token_id, dpo.tokenizer_fn(model=tiny_model, max_seq_len=64))(raw)
    assert set(with_ref) == set(raw) | {"chosen_ref_logp", "rejected_ref_logp"}
    precomputed = dpo.encode(with_ref, model=tiny_model, max_seq_len=64)
    offline, m_offline, *_ = dpo.loss(policy, None, precomputed, tok.pad_token_id)
    assert float(online) == pytest.approx(float(offline), abs=1e-5)
    assert m_online["reward_margin"] == pytest.approx(m_offline["reward_margin"], abs=1e-4)
    assert float(online) != pytest.approx(math.log(2), abs=1e-3)


def test_deepspeed_config_comes_from_the_train_section() -> None:
    from alma_ray.config import TrainConfig
    from alma_ray.train.loop import deepspeed_config

    cpu = deepspeed_config(TrainConfig(zero_stage=2, micro_batch=3, grad_accum=4), use_gpu=False)
    assert cpu["zero_optimization"] == {"stage": 2} and not cpu["bf16"]["enabled"]
    assert (cpu["train_micro_batch_size_per_gpu"], cpu["gradient_accumulation_steps"]) == (3, 4)
    gpu = deepspeed_config(TrainConfig(zero_stage=3, offload=True), use_gpu=True)
    assert gpu["bf16"]["enabled"] and gpu["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="zero_stage >= 1"):
        deepspeed_config(TrainConfig(zero_stage=0, offload=True), use_gpu=True)
