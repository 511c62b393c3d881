"""SFT on Ray Train + DeepSpeed ZeRO: loss on response tokens only, an HF folder vLLM can load at the end.

Ray Data tokenizes (``tokenize_sft``), ``TorchTrainer`` streams an equal shard to each worker, and
``train_loop`` wraps the model with ``deepspeed.initialize``. gloo on CPU, NCCL on GPU, fp32 on CPU and bf16 on
GPU unless the config says otherwise. Rank 0 saves the consolidated model (ZeRO-3 gathered) with its tokenizer
and reports it as the run's checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray.data import Dataset

from alma_ray.config import Config, TrainConfig
from alma_ray.engine import format_prompt, uses_chat_template

IGNORE = -100


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def tokenize_sft(batch: dict[str, np.ndarray], *, model: str, max_seq_len: int,
                 completion_template: str) -> dict[str, list[Any]]:
    """(prompt, response) -> input_ids, with labels masked (-100) everywhere but the response and its EOS."""
    tok = _tokenizer(model)
    chat = uses_chat_template(tok, None)
    out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    for prompt, response in zip(batch["prompt"], batch["response"]):
        text = format_prompt(tok, str(prompt), chat=chat, completion_template=completion_template)
        p = tok.encode(text, add_special_tokens=not chat)
        r = tok.encode(str(response) if chat else " " + str(response), add_special_tokens=False)
        r = r + [tok.eos_token_id]
        out["input_ids"].append(np.array((p + r)[:max_seq_len], dtype=np.int64))
        out["labels"].append(np.array(([IGNORE] * len(p) + r)[:max_seq_len], dtype=np.int64))
    return out


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


def _pad(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(x) for x in batch["input_ids"])
    ids = torch.full((len(batch["input_ids"]), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(batch["input_ids"], batch["labels"])):
        ids[i, : len(x)] = torch.as_tensor(x)
        labels[i, : len(y)] = torch.as_tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``train_loop_per_worker``)."""
    use_gpu: bool = cfg["use_gpu"]
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not use_gpu:
        # The shared-memory all-reduce op would be JIT-compiled with g++ (about a minute); gloo does the job.
        deepspeed.ops.__compatible_ops__ = {}  # type: ignore[attr-defined]
    train = TrainConfig(**cfg["train"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(train.seed)
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")

    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(train, use_gpu=use_gpu))
    shard = ray.train.get_dataset_shard("train")
    losses: list[float] = []
    tokens = 0
    started = time.time()
    for epoch in range(train.epochs):
        for batch in shard.iter_batches(batch_size=train.micro_batch, batch_format="numpy",
                                        local_shuffle_buffer_size=None):
            inputs = {k: v.to(engine.device) for k, v in _pad(batch, pad_id).items()}
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            tokens += int((inputs["labels"] != IGNORE).sum())
            if len(losses) % train.report_every == 0:
                ray.train.report({"loss": losses[-1], "step": len(losses), "epoch": epoch})
    elapsed = time.time() - started
    metrics = {"loss": losses[-1] if losses else float("nan"), "steps": len(losses),
               "train_tokens_per_s_rank0": tokens / elapsed if elapsed else 0.0, "losses": losses}

    state = (engine._zero3_consolidated_16bit_state_dict() if train.zero_stage == 3  # collective: all ranks
             else engine.module.state_dict())
    if rank == 0:
        with tempfile.TemporaryDirectory() as out:
            engine.module.save_pretrained(out, state_dict=state)
            tokenizer.save_pretrained(out)
            Path(out, "train_metrics.json").write_text(json.dumps(metrics))
            ray.train.report({k: v for k, v in metrics.items() if k != "losses"},
                             checkpoint=ray.train.Checkpoint.from_directory(out))
    else:
        ray.train.report({k: v for k, v in metrics.items() if k != "losses"})


def train_sft(examples: Dataset, config: Config, *, model: str, out_dir: Path, seed: int) -> dict[str, Any]:
    """Fine-tune ``model`` on ``examples`` (prompt, response) and write the result as an HF folder in ``out_dir``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res, train = config.resources, config.train.model_copy(update={"seed": seed})
    tokenized = examples.map_batches(
        tokenize_sft, fn_kwargs=dict(model=model, max_seq_len=train.max_seq_len,  # type: ignore[arg-type]
                                     completion_template=config.generation.completion_template),
        batch_size=256)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": model, "use_gpu": res.use_gpu, "train": train.model_dump()},
        scaling_config=ScalingConfig(num_workers=res.train_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=None if res.use_gpu
                                     else {"CPU": res.cpus_per_train_worker}),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(name=f"sft-{out_dir.parent.name}-{seed}",
                             storage_path=str(out_dir.parent.parent.resolve() / "ray_train")),
        datasets={"train": tokenized},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the Ray Train logs above")
    result.checkpoint.to_directory(str(out_dir))
    return json.loads((out_dir / "train_metrics.json").read_text())
