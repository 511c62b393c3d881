"""One training loop on Ray Train + DeepSpeed ZeRO for every objective: SFT, DPO, reward model (and the judge,
which is SFT on rating targets). The result is an HF folder; causal LMs load in vLLM for the next round.

Ray Data tokenizes (``alma_ray.train.data``), ``TorchTrainer`` streams an equal shard to each worker, and
``train_loop`` wraps the model with ``deepspeed.initialize``. gloo on CPU, NCCL on GPU, fp32 on CPU and bf16 on
GPU unless the config says otherwise. Rank 0 saves the consolidated model (ZeRO-3 gathered) with its tokenizer
and reports it as the run's checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from ray.data import Dataset

from alma_ray.config import Config, TrainConfig
from alma_ray.train.data import pad_batch, tokenize_pairs, tokenize_sft

Objective = Literal["sft", "dpo", "reward"]
STATE_TAG = "state"
PROGRESS = "progress.json"
COLUMNS: dict[str, list[str]] = {"sft": ["prompt", "response"], "dpo": ["prompt", "chosen", "rejected"],
                                 "reward": ["prompt", "chosen", "rejected"]}


def deepspeed_config(train: TrainConfig, *, use_gpu: bool) -> dict[str, Any]:
    bf16 = train.precision == "bf16" or (train.precision == "auto" and use_gpu)
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_force_ds_cpu_optimizer": False,  # we pass torch's AdamW: no JIT-compiled DeepSpeed optimizer
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _load_model(path: str, objective: str, pad_id: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if objective == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = pad_id
        return model
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _step(objective: str, engine: Any, reference: Any, batch: dict[str, Any], pad_id: int, beta: float,
          ) -> tuple[Any, dict[str, float], int]:
    """Loss, metrics and trained-on tokens for one micro-batch."""
    import torch

    from alma_ray.train.losses import (
        IGNORE,
        bradley_terry_loss,
        dpo_loss,
        last_token_values,
        sequence_logprobs,
        sft_loss,
    )

    if objective == "sft":
        inputs = {k: v.to(engine.device) for k, v in pad_batch(batch["input_ids"], batch["labels"], pad_id).items()}
        logits = engine(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return sft_loss(logits, inputs["labels"]), {}, int((inputs["labels"] != IGNORE).sum())
    # Preference pairs: chosen and rejected in one forward pass (rows [:B] and [B:]).
    n = len(batch["chosen_input_ids"])
    inputs = {k: v.to(engine.device) for k, v in pad_batch(
        [*batch["chosen_input_ids"], *batch["rejected_input_ids"]],
        [*batch["chosen_labels"], *batch["rejected_labels"]], pad_id).items()}
    tokens = int(inputs["attention_mask"].sum())
    if objective == "reward":
        module = engine.module
        hidden = module.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        values = last_token_values(module.score(hidden.last_hidden_state), inputs["attention_mask"])
        loss, metrics = bradley_terry_loss(values[:n], values[n:])
        return loss, metrics, tokens
    logp = sequence_logprobs(engine(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits,
                             inputs["labels"])
    with torch.no_grad():
        ref = sequence_logprobs(reference(input_ids=inputs["input_ids"],
                                          attention_mask=inputs["attention_mask"]).logits, inputs["labels"])
    loss, metrics = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], beta=beta)
    return loss, metrics, tokens


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``train_loop_per_worker``)."""
    use_gpu: bool = cfg["use_gpu"]
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from alma_ray.train.losses import metrics_mean

    if not use_gpu:
        # The shared-memory all-reduce op would be JIT-compiled with g++ (about a minute); gloo does the job.
        deepspeed.ops.__compatible_ops__ = {}  # type: ignore[attr-defined]
    train = TrainConfig(**cfg["train"])
    objective: str = cfg["objective"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(train.seed)
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")

    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = _load_model(cfg["model"], objective, pad_id)
    reference = None
    if objective == "dpo":  # frozen reference, computed on the fly (same device, no optimizer state)
        reference = _load_model(cfg.get("reference") or cfg["model"], objective, pad_id).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(train, use_gpu=use_gpu))
    if reference is not None:
        reference.to(engine.device)
    shard = ray.train.get_dataset_shard("train")
    losses: list[float] = []
    history: list[dict[str, float]] = []
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group (or rerun stage): DeepSpeed state + the curves so far
        with checkpoint.as_directory() as state_dir:
            if Path(state_dir, PROGRESS).exists():  # not a finished run's final model folder
                engine.load_checkpoint(state_dir, tag=STATE_TAG)
                progress = json.loads(Path(state_dir, PROGRESS).read_text())
                losses, history, resumed_from = progress["losses"], progress["history"], progress["step"]
    tokens = 0
    started = time.time()
    step = 0
    for epoch in range(train.epochs):
        for batch in shard.iter_batches(batch_size=train.micro_batch, batch_format="numpy",
                                        local_shuffle_buffer_size=None):
            step += 1
            if step <= resumed_from:  # done before the restart (the shard's order may differ slightly)
                continue
            loss, metrics, n_tokens = _step(objective, engine, reference, batch, pad_id, train.dpo_beta)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            history.append(metrics)
            tokens += n_tokens
            report = {"loss": losses[-1], "step": step, "epoch": epoch,
                      **metrics_mean(history[-train.report_every:])}
            if train.checkpoint_every and step % train.checkpoint_every == 0:
                with tempfile.TemporaryDirectory() as state_dir:  # every rank writes its ZeRO shard
                    engine.save_checkpoint(state_dir, tag=STATE_TAG)
                    if rank == 0:
                        Path(state_dir, PROGRESS).write_text(json.dumps(
                            {"step": step, "losses": losses, "history": history}))
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(state_dir))
            elif step % train.report_every == 0:
                ray.train.report(report)
    elapsed = time.time() - started
    last_quarter = metrics_mean(history[-max(1, len(history) // 4):])
    summary: dict[str, Any] = {
        "objective": objective, "loss": losses[-1] if losses else float("nan"), "steps": len(losses),
        "resumed_from_step": resumed_from,
        "train_tokens_per_s_rank0": tokens / elapsed if elapsed else 0.0, "losses": losses,
        **{f"final_{k}": v for k, v in last_quarter.items()}}

    state = (engine._zero3_consolidated_16bit_state_dict() if train.zero_stage == 3  # collective: all ranks
             else engine.module.state_dict())
    if rank == 0:
        with tempfile.TemporaryDirectory() as out:
            engine.module.save_pretrained(out, state_dict=state)
            tokenizer.save_pretrained(out)
            Path(out, "train_metrics.json").write_text(json.dumps(summary))
            ray.train.report({k: v for k, v in summary.items() if k != "losses"},
                             checkpoint=ray.train.Checkpoint.from_directory(out))
    else:
        ray.train.report({k: v for k, v in summary.items() if k != "losses"})


def fit(examples: Dataset, config: Config, *, objective: Objective, model: str, out_dir: Path, seed: int,
        reference: str | None = None) -> dict[str, Any]:
    """Train ``model`` with ``objective`` on ``examples`` and write the result as an HF folder in ``out_dir``.

    Columns: ``prompt, response`` for ``sft``; ``prompt, chosen, rejected`` for ``dpo`` and ``reward``. DPO's
    frozen reference is ``reference`` (default: ``model``, the usual choice). Returns the metrics written to
    ``out_dir/train_metrics.json`` (loss curve, tokens/s and the objective's own figures).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    missing = [c for c in COLUMNS[objective] if c not in examples.columns()]
    if missing:
        raise ValueError(f"{objective} training needs columns {COLUMNS[objective]}; missing {missing}")
    res, train = config.resources, config.train.model_copy(update={"seed": seed})
    kwargs = dict(model=model, max_seq_len=train.max_seq_len, completion_template=config.generation.completion_template)
    if objective == "sft":
        tokenized = examples.map_batches(tokenize_sft, fn_kwargs=kwargs, batch_size=256)  # type: ignore[arg-type]
    else:
        pair_kwargs = {**kwargs, "eos": objective == "dpo"}  # the reward head reads the last response token
        tokenized = examples.map_batches(tokenize_pairs, fn_kwargs=pair_kwargs, batch_size=256)  # type: ignore[arg-type]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": model, "reference": reference, "objective": objective, "use_gpu": res.use_gpu,
                           "train": train.model_dump()},
        scaling_config=ScalingConfig(num_workers=res.train_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=None if res.use_gpu
                                     else {"CPU": res.cpus_per_train_worker}),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(name=f"{objective}-{out_dir.parent.name}-{seed}",
                             storage_path=str(out_dir.parent.parent.resolve() / "ray_train"),
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": tokenized},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the Ray Train logs above")
    result.checkpoint.to_directory(str(out_dir))
    return json.loads((out_dir / "train_metrics.json").read_text())
