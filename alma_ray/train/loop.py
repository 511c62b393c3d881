"""One training loop on Ray Train + DeepSpeed ZeRO for every objective: SFT, DPO, the reward model and the
judge's rating loss (``alma_ray.train.losses``). The result is an HF folder; causal LMs load in vLLM for the next
round.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ray.data import ActorPoolStrategy, Dataset

from alma_ray.config import Config, TrainConfig
from alma_ray.train.data import (
    ReferenceLogprobs,
    micro_batches,
    pad_batch,
    tokenize_judge,
    tokenize_pairs,
    tokenize_sft,
)
from alma_ray.train.losses import metrics_mean

Objective = Literal["sft", "dpo", "reward", "judge"]
STATE_TAG = "state"
PROGRESS = "progress.json"
COLUMNS: dict[str, list[str]] = {"sft": ["prompt", "response"], "dpo": ["prompt", "chosen", "rejected"],
                                 "reward": ["prompt", "chosen", "rejected"],
                                 "judge": ["prompt", "response", "target"]}


def _offload(train: TrainConfig) -> dict[str, Any]:
    """ZeRO-Offload: optimizer state (ZeRO 1-3) and, at ZeRO-3, parameters kept in CPU memory."""
    if not train.offload:
        return {}
    if train.zero_stage == 0:
        raise ValueError("train.offload needs train.zero_stage >= 1 (ZeRO-0 keeps everything on the device)")
    out: dict[str, Any] = {"offload_optimizer": {"device": "cpu", "pin_memory": True}}
    if train.zero_stage == 3:
        out["offload_param"] = {"device": "cpu", "pin_memory": True}
    return out


def deepspeed_config(train: TrainConfig, *, use_gpu: bool) -> dict[str, Any]:
    bf16 = train.precision == "bf16" or (train.precision == "auto" and use_gpu)
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": train.zero_stage, **_offload(train)},
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
          score_tokens: Any = None) -> tuple[Any, dict[str, float], int, int]:
    """Loss, metrics, real (non-padding) tokens and padded cells of one micro-batch."""
    import torch

    from alma_ray.train.losses import (
        bradley_terry_loss,
        dpo_loss,
        judge_rating_loss,
        last_token_values,
        score_logprobs,
        sequence_logprobs,
        sft_loss,
    )

    if objective == "judge":  # the rating slot and the slot after "1", from one pass over (judge prompt + "1")
        inputs = {k: v.to(engine.device) for k, v in pad_batch(batch["input_ids"], batch["input_ids"], pad_id).items()}
        mask = inputs["attention_mask"]
        logits = engine(input_ids=inputs["input_ids"], attention_mask=mask).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = torch.as_tensor(np.asarray(batch["rating_pos"], dtype=np.int64), device=logits.device)
        score_lp = score_logprobs(logits[rows, pos], logits[rows, pos + 1], score_tokens.digits, score_tokens.ten)
        target = torch.as_tensor(np.stack(batch["target"]), device=logits.device)
        loss, metrics = judge_rating_loss(score_lp, target)
        return loss, metrics, int(mask.sum()), mask.numel()
    if objective == "sft":
        inputs = {k: v.to(engine.device) for k, v in pad_batch(batch["input_ids"], batch["labels"], pad_id).items()}
        logits = engine(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        mask = inputs["attention_mask"]
        return sft_loss(logits, inputs["labels"]), {}, int(mask.sum()), mask.numel()
    # Preference pairs: chosen and rejected in one forward pass (rows [:B] and [B:]).
    n = len(batch["chosen_input_ids"])
    inputs = {k: v.to(engine.device) for k, v in pad_batch(
        [*batch["chosen_input_ids"], *batch["rejected_input_ids"]],
        [*batch["chosen_labels"], *batch["rejected_labels"]], pad_id).items()}
    mask = inputs["attention_mask"]
    tokens, cells = int(mask.sum()), mask.numel()
    if objective == "reward":
        module = engine.module
        hidden = module.base_model(input_ids=inputs["input_ids"], attention_mask=mask)
        values = last_token_values(module.score(hidden.last_hidden_state), mask)
        loss, metrics = bradley_terry_loss(values[:n], values[n:])
        return loss, metrics, tokens, cells
    logp = sequence_logprobs(engine(input_ids=inputs["input_ids"], attention_mask=mask).logits, inputs["labels"])
    if reference is None:  # precomputed by ReferenceLogprobs before training
        ref = torch.as_tensor(np.concatenate([np.asarray(batch["chosen_ref_logp"], dtype=np.float64),
                                              np.asarray(batch["rejected_ref_logp"], dtype=np.float64)]),
                              device=logp.device, dtype=logp.dtype)
    else:
        with torch.no_grad():
            ref = sequence_logprobs(reference(input_ids=inputs["input_ids"], attention_mask=mask).logits,
                                    inputs["labels"])
    loss, metrics = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], beta=beta)
    return loss, metrics, tokens, cells


@dataclass
class Worker:
    """One rank's model, wrapped by DeepSpeed (plus DPO's frozen reference), and what it has done so far."""

    objective: str
    train: TrainConfig
    engine: Any
    reference: Any
    tokenizer: Any
    pad_id: int
    score_tokens: Any = None
    """The judge objective's rating-digit token ids (``alma_ray.stages.judge.ScoreTokens``)."""
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    resumed_from: int = 0
    tokens: int = 0
    cells: int = 0
    step_ends: list[tuple[float, int]] = field(default_factory=list)
    """(time, cumulative real tokens) after each step this process ran."""
    first_step_at: float = 0.0

    @classmethod
    def start(cls, cfg: dict[str, Any]) -> Worker:
        """Join the process group and build the DeepSpeed engine (every rank; Ray Train and bare torchrun alike)."""
        use_gpu: bool = cfg["use_gpu"]
        if not use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import torch
        from transformers import AutoTokenizer

        if not use_gpu:
            # The shared-memory all-reduce op would be JIT-compiled with g++ (about a minute); gloo does the job.
            deepspeed.ops.__compatible_ops__ = {}  # type: ignore[attr-defined]
        train = TrainConfig(**cfg["train"])
        objective: str = cfg["objective"]
        torch.manual_seed(train.seed)
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model = _load_model(cfg["model"], objective, pad_id)
        reference = None
        if objective == "dpo" and train.dpo_reference == "online":  # frozen, on the same device, no optimizer
            reference = _load_model(cfg.get("reference") or cfg["model"], objective, pad_id)
            reference.eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          config=deepspeed_config(train, use_gpu=use_gpu))
        if reference is not None:
            reference.to(engine.device)
        score_tokens = None
        if objective == "judge":
            from alma_ray.stages.judge import ScoreTokens

            score_tokens = ScoreTokens.from_tokenizer(tokenizer)
        return cls(objective, train, engine, reference, tokenizer, pad_id, score_tokens)

    def micro_batches(self, windows: Iterable[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.train.seed, epoch])
        return micro_batches(windows, micro_batch=self.train.micro_batch, rng=rng,
                             bucket=self.train.bucket_window > 1)

    def run_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimizer micro-step; returns what to report (loss, step, the objective's running metrics)."""
        if not self.first_step_at:
            self.first_step_at = time.time()
        loss, metrics, tokens, cells = _step(self.objective, self.engine, self.reference, batch, self.pad_id,
                                             self.train.dpo_beta, self.score_tokens)
        self.engine.backward(loss)
        self.engine.step()
        self.losses.append(float(loss.detach()))
        self.history.append(metrics)
        self.tokens += tokens
        self.cells += cells
        self.step_ends.append((time.time(), self.tokens))
        return {"loss": self.losses[-1], "step": self.step,
                **metrics_mean(self.history[-self.train.report_every:])}

    def evaluate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Loss and the objective's metrics over held-out micro-batches, without updating the model."""
        import torch

        losses, history = [], []
        self.engine.eval()
        with torch.no_grad():
            for batch in batches:
                loss, metrics, *_ = _step(self.objective, self.engine, self.reference, batch, self.pad_id,
                                          self.train.dpo_beta, self.score_tokens)
                losses.append(float(loss))
                history.append(metrics)
        self.engine.train()
        if not losses:
            return {}
        return {"heldout_loss": sum(losses) / len(losses), "heldout_batches": len(losses),
                **{f"heldout_{k}": v for k, v in metrics_mean(history).items()}}

    def summary(self) -> dict[str, Any]:
        """Loss curve, tokens/s (whole run and steady state: after the first quarter of steps) and final metrics."""
        elapsed = self.step_ends[-1][0] - self.first_step_at if self.step_ends else 0.0
        warm = len(self.step_ends) // 4
        steady = 0.0
        if 0 < warm < len(self.step_ends) - 1:
            (t0, k0), (t1, k1) = self.step_ends[warm], self.step_ends[-1]
            steady = (k1 - k0) / (t1 - t0)
        last_quarter = metrics_mean(self.history[-max(1, len(self.history) // 4):])
        return {
            "objective": self.objective, "loss": self.losses[-1] if self.losses else float("nan"),
            "steps": len(self.losses), "resumed_from_step": self.resumed_from,
            "train_tokens_per_s_rank0": self.tokens / elapsed if elapsed else 0.0,
            "steady_tokens_per_s_rank0": steady, "padding_fraction": 1 - self.tokens / max(1, self.cells),
            "first_step_at": self.first_step_at, "losses": self.losses,
            **{f"final_{k}": v for k, v in last_quarter.items()}}

    def consolidated_state(self) -> dict[str, Any]:
        """The full state dict; under ZeRO-3 a collective gather that every rank must join."""
        if self.train.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()  # type: ignore[no-any-return]
        return self.engine.module.state_dict()  # type: ignore[no-any-return]

    def save_pretrained(self, out: str, state: dict[str, Any], summary: dict[str, Any]) -> None:
        self.engine.module.save_pretrained(out, state_dict=state)
        self.tokenizer.save_pretrained(out)
        Path(out, "train_metrics.json").write_text(json.dumps(summary))


def loop_config(train: TrainConfig, *, objective: str, model: str, reference: str | None, use_gpu: bool,
                heldout: bool = False) -> dict[str, Any]:
    """What every rank's ``Worker.start`` / ``train_loop`` reads (Ray Train's ``train_loop_config``)."""
    return {"model": model, "reference": reference, "objective": objective, "use_gpu": use_gpu,
            "train": train.model_dump(), "heldout": heldout}


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``train_loop_per_worker``)."""
    import ray.train

    worker = Worker.start(cfg)
    train = worker.train
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group (or rerun stage): DeepSpeed state + the curves so far
        with checkpoint.as_directory() as state_dir:
            if Path(state_dir, PROGRESS).exists():  # not a finished run's final model folder
                worker.engine.load_checkpoint(state_dir, tag=STATE_TAG)
                progress = json.loads(Path(state_dir, PROGRESS).read_text())
                worker.losses, worker.history = progress["losses"], progress["history"]
                worker.resumed_from = progress["step"]
    for epoch in range(train.epochs):
        windows = shard.iter_batches(batch_size=train.micro_batch * train.bucket_window, batch_format="numpy",
                                     local_shuffle_buffer_size=None)
        for batch in worker.micro_batches(windows, epoch):
            worker.step += 1
            if worker.step <= worker.resumed_from:  # done before the restart (the shard's order may differ)
                continue
            report = {**worker.run_step(batch), "epoch": epoch}
            if train.checkpoint_every and worker.step % train.checkpoint_every == 0:
                with tempfile.TemporaryDirectory() as state_dir:  # every rank writes its ZeRO shard
                    worker.engine.save_checkpoint(state_dir, tag=STATE_TAG)
                    if rank == 0:
                        Path(state_dir, PROGRESS).write_text(json.dumps(
                            {"step": worker.step, "losses": worker.losses, "history": worker.history}))
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(state_dir))
            elif worker.step % train.report_every == 0:
                ray.train.report(report)
    summary = worker.summary()
    if cfg.get("heldout"):
        heldout = ray.train.get_dataset_shard("heldout")
        summary.update(worker.evaluate(heldout.iter_batches(batch_size=train.micro_batch, batch_format="numpy")))
    state = worker.consolidated_state()
    if rank == 0:
        with tempfile.TemporaryDirectory() as out:
            worker.save_pretrained(out, state, summary)
            ray.train.report({k: v for k, v in summary.items() if k != "losses"},
                             checkpoint=ray.train.Checkpoint.from_directory(out))
    else:
        ray.train.report({k: v for k, v in summary.items() if k != "losses"})


def _tokenize(examples: Dataset, config: Config, train: TrainConfig, *, objective: str, model: str,
              reference: str | None) -> Dataset:
    """The rows each worker trains on (or evaluates), tokenized by Ray Data; DPO's reference log-probs added."""
    missing = [c for c in COLUMNS[objective] if c not in examples.columns()]
    if missing:
        raise ValueError(f"{objective} training needs columns {COLUMNS[objective]}; missing {missing}")
    res = config.resources
    kwargs = dict(model=model, max_seq_len=train.max_seq_len, completion_template=config.generation.completion_template)
    if objective == "sft":
        return examples.map_batches(tokenize_sft, fn_kwargs=kwargs, batch_size=256)  # type: ignore[arg-type]
    if objective == "judge":
        judge_kwargs = dict(model=model, max_seq_len=train.max_seq_len, chat=config.judge.chat_template,
                            max_response_chars=config.judge.max_response_chars)
        return examples.map_batches(tokenize_judge, fn_kwargs=judge_kwargs, batch_size=256)  # type: ignore[arg-type]
    pair_kwargs = {**kwargs, "eos": objective == "dpo"}  # the reward head reads the last response token
    tokenized = examples.map_batches(tokenize_pairs, fn_kwargs=pair_kwargs, batch_size=256)  # type: ignore[arg-type]
    if objective == "dpo" and train.dpo_reference == "precomputed":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        # A pass of its own before training, on the devices training will use next (materialized: the object
        # store spills to disk), rather than streaming beside training and competing for them.
        tokenized = tokenized.map_batches(
            ReferenceLogprobs, batch_size=16, compute=ActorPoolStrategy(size=res.train_workers),
            fn_constructor_kwargs=dict(model=reference or model,
                                       pad_id=tok.pad_token_id if tok.pad_token_id is not None
                                       else tok.eos_token_id),
            num_gpus=1 if res.use_gpu else 0, num_cpus=0 if res.use_gpu else res.cpus_per_train_worker,
        ).materialize()
    return tokenized


def fit(examples: Dataset, config: Config, *, objective: Objective, model: str, out_dir: Path, seed: int,
        reference: str | None = None, heldout: Dataset | None = None, run_name: str | None = None
        ) -> dict[str, Any]:
    """Train ``model`` with ``objective`` on ``examples`` and write the result as an HF folder in ``out_dir``.

    Columns: ``prompt, response`` for ``sft``; ``prompt, chosen, rejected`` for ``dpo`` and ``reward``;
    ``prompt, response, target`` for ``judge`` (target: 11 probabilities over the ratings 0..10). DPO's
    frozen reference is ``reference`` (default: ``model``, the usual choice). ``heldout`` rows (same columns)
    are evaluated after training: ``heldout_loss`` and the objective's figures, e.g. ``heldout_pair_accuracy``
    for the reward model. ``run_name`` names the Ray Train run, whose checkpoints a rerun resumes from (default:
    ``<objective>-<out_dir's folder>-<seed>``; give two trainings that share a folder their own). Returns the
    metrics written to ``out_dir/train_metrics.json`` (loss curve, tokens/s and the objective's own figures).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res, train = config.resources, config.train.model_copy(update={"seed": seed})
    datasets: dict[str, Any] = {}
    for name, rows in (("train", examples), ("heldout", heldout)):
        if rows is not None:  # every rank reads all of heldout: under ZeRO-3 a forward pass needs every rank
            datasets[name] = _tokenize(rows, config, train, objective=objective, model=model, reference=reference)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config(train, objective=objective, model=model, reference=reference,
                                      use_gpu=res.use_gpu, heldout=heldout is not None),
        scaling_config=ScalingConfig(num_workers=res.train_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=None if res.use_gpu
                                     else {"CPU": res.cpus_per_train_worker}),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(name=run_name or f"{objective}-{out_dir.parent.name}-{seed}",
                             storage_path=str(out_dir.parent.parent.resolve() / "ray_train"),
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the Ray Train logs above")
    result.checkpoint.to_directory(str(out_dir))
    return json.loads((out_dir / "train_metrics.json").read_text())
