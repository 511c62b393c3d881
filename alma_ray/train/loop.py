"""One training loop on Ray Train + DeepSpeed ZeRO for every objective (``alma_ray.train.objectives``: SFT, DPO,
the reward model and the judge's rating loss). The result is an HF folder; causal LMs load in vLLM for the next
round.

Each worker gets an equal share of the raw rows (streamed by Ray Data, or for small examples taken from one
in-memory table: ``alma_ray.train.data.Examples``) and tokenizes it with the objective's batch function (no Ray
Data pass of its own: that pass cost a fresh process importing transformers, about 15-25 s of every training's
start-up), and ``train_loop`` wraps the model with ``deepspeed.initialize``. gloo on CPU, NCCL on GPU, fp32 on CPU
and bf16 on GPU unless the config says otherwise. Rank 0 saves the consolidated model (ZeRO-3 gathered) with its
tokenizer and reports it as the run's checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alma_ray.config import ResourcesConfig, TrainConfig
from alma_ray.train.data import Examples, micro_batches, table_windows
from alma_ray.train.losses import metrics_mean
from alma_ray.train.objectives import Objective

STATE_TAG = "state"
PROGRESS = "progress.json"


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


@dataclass
class Worker:
    """One rank's model, wrapped by DeepSpeed (plus DPO's frozen reference), and what it has done so far."""

    objective: Objective
    train: TrainConfig
    seed: int
    engine: Any
    reference: Any
    tokenizer: Any
    pad_id: int
    model: str
    """The folder training starts from; its tokenizer encodes the rows."""
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    resumed_from: int = 0
    tokens: int = 0
    cells: int = 0
    step_ends: list[tuple[float, int]] = field(default_factory=list)
    """(time, cumulative real tokens) after each step this process ran."""
    first_step_at: float = 0.0
    entered_at: float = 0.0
    """When this rank's ``Worker.start`` began (under Ray Train the process group is already up; under torchrun
    ``deepspeed.init_distributed`` joins it inside ``start``, so it counts in the engine build)."""
    ready_at: float = 0.0
    """When its DeepSpeed engine was built (imports, model load, ``deepspeed.initialize`` done)."""

    @classmethod
    def start(cls, cfg: dict[str, Any]) -> Worker:
        """Join the process group and build the DeepSpeed engine (every rank; Ray Train and bare torchrun alike)."""
        entered_at = time.time()
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
        seed: int = cfg["seed"]
        torch.manual_seed(seed)
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        objective: Objective = cfg["objective"].bind(tokenizer)
        model = objective.load_model(cfg["model"], pad_id)
        reference = objective.load_reference(cfg["model"], pad_id)  # frozen, on the same device, no optimizer
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          config=deepspeed_config(train, use_gpu=use_gpu))
        if reference is not None:
            reference.to(engine.device)
        return cls(objective, train, seed, engine, reference, tokenizer, pad_id, cfg["model"], entered_at=entered_at,
                   ready_at=time.time())

    def encode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Raw rows (the objective's columns) as token ids, with this rank's tokenizer."""
        return self.objective.encode(batch, model=self.model, max_seq_len=self.train.max_seq_len)

    def micro_batches(self, windows: Iterable[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        """Windows of raw rows -> tokenized, length-bucketed micro-batches in a seeded order."""
        rng = np.random.default_rng([self.seed, epoch])
        return micro_batches(map(self.encode, windows), micro_batch=self.train.micro_batch, rng=rng,
                             bucket=self.train.bucket_window > 1)

    def schedule(self, windows: Callable[[int], Iterable[dict[str, Any]]]
                 ) -> Iterator[tuple[int, dict[str, Any], bool]]:
        """(epoch, micro-batch, last) for every micro-batch of every epoch, in order; ``windows(epoch)`` gives that
        epoch's raw rows. ``last`` marks the training's final micro-batch (``run_step``)."""
        stream = ((epoch, batch) for epoch in range(self.train.epochs)
                  for batch in self.micro_batches(windows(epoch), epoch))
        ahead = next(stream, None)
        while ahead is not None:
            (epoch, batch), ahead = ahead, next(stream, None)
            yield epoch, batch, ahead is None

    def run_step(self, batch: dict[str, Any], *, last: bool = False) -> dict[str, float]:
        """One micro-step; returns what to report (loss, step, the objective's running metrics). The optimizer
        steps every ``train.grad_accum`` micro-steps and after the ``last`` one, so that a final, partial
        accumulation is not lost (its gradient weighs its share of ``grad_accum``, as DeepSpeed scales each)."""
        if not self.first_step_at:
            self.first_step_at = time.time()
        if last:  # every rank runs as many micro-steps (alma_ray.train.data.micro_batches): all step here
            self.engine.set_gradient_accumulation_boundary(True)
        loss, metrics, tokens, cells = self.objective.loss(self.engine, self.reference, batch, self.pad_id)
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
                loss, metrics, *_ = self.objective.loss(self.engine, self.reference, batch, self.pad_id)
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
            "objective": self.objective.name, "loss": self.losses[-1] if self.losses else float("nan"),
            "steps": len(self.losses), "optimizer_steps": int(self.engine.global_steps),
            "resumed_from_step": self.resumed_from,
            "train_tokens_per_s_rank0": self.tokens / elapsed if elapsed else 0.0,
            "steady_tokens_per_s_rank0": steady, "padding_fraction": 1 - self.tokens / max(1, self.cells),
            "busy_s": round(elapsed, 3),
            "entered_at": self.entered_at, "ready_at": self.ready_at, "first_step_at": self.first_step_at,
            "losses": self.losses,
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


def loop_config(train: TrainConfig, *, objective: Objective, model: str, seed: int, use_gpu: bool,
                heldout: bool = False, tables: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every rank's ``Worker.start`` / ``train_loop`` reads (Ray Train's ``train_loop_config``); ``tables``:
    the small examples' object refs by dataset name (``alma_ray.train.data.Examples``)."""
    return {"model": model, "objective": objective, "seed": seed, "use_gpu": use_gpu, "train": train.model_dump(),
            "heldout": heldout, "tables": tables or {}}


def _windows(cfg: dict[str, Any], name: str, size: int, *, shard: bool) -> Iterable[dict[str, Any]]:
    """Windows of ``size`` raw rows of the dataset ``name``: this rank's share (``shard``) or all of them, from the
    small path's table or Ray Data's stream."""
    import ray
    import ray.train

    ref = cfg["tables"].get(name)
    if ref is None:
        return ray.train.get_dataset_shard(name).iter_batches(batch_size=size, batch_format="numpy",
                                                              local_shuffle_buffer_size=None)
    context = ray.train.get_context()
    rank, world = (context.get_world_rank(), context.get_world_size()) if shard else (0, 1)
    return table_windows(ray.get(ref), size, rank=rank, world=world)


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``train_loop_per_worker``)."""
    import ray.train

    worker = Worker.start(cfg)
    train = worker.train
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group (or rerun stage): DeepSpeed state + the curves so far
        with checkpoint.as_directory() as state_dir:
            if Path(state_dir, PROGRESS).exists():  # not a finished run's final model folder
                worker.engine.load_checkpoint(state_dir, tag=STATE_TAG)
                progress = json.loads(Path(state_dir, PROGRESS).read_text())
                worker.losses, worker.history = progress["losses"], progress["history"]
                worker.resumed_from = progress["step"]
    for epoch, batch, last in worker.schedule(
            lambda _: _windows(cfg, "train", train.micro_batch * train.bucket_window, shard=True)):
        worker.step += 1
        if worker.step <= worker.resumed_from:  # done before the restart (the shard's order may differ)
            continue
        report = {**worker.run_step(batch, last=last), "epoch": epoch}
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
        batches = _windows(cfg, "heldout", train.micro_batch, shard=False)
        summary.update(worker.evaluate(map(worker.encode, batches)))
    state = worker.consolidated_state()
    if rank == 0:
        with tempfile.TemporaryDirectory() as out:
            worker.save_pretrained(out, state, summary)
            ray.train.report({k: v for k, v in summary.items() if k != "losses"},
                             checkpoint=ray.train.Checkpoint.from_directory(out))
    else:
        ray.train.report({k: v for k, v in summary.items() if k != "losses"})


def fit(examples: Examples, objective: Objective, *, train: TrainConfig, resources: ResourcesConfig, model: str,
        out_dir: Path, seed: int, heldout: Examples | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Train ``model`` with ``objective`` on ``examples`` and write the result as an HF folder in ``out_dir``.

    ``examples`` (a dataset, or a small table: ``alma_ray.train.data.Examples``) need the objective's columns
    (``objective.columns``; a missing one is named). ``heldout`` rows
    (same columns) are evaluated after training: ``heldout_loss`` and the objective's figures, e.g.
    ``heldout_pair_accuracy`` for the reward model. ``seed`` seeds the model's initialisation order and the
    micro-batch order. ``run_name`` names the Ray Train run, whose checkpoints a rerun resumes from (default:
    ``<objective>-<out_dir's folder>-<seed>``; give two trainings that share a folder their own). Returns the
    metrics written to ``out_dir/train_metrics.json`` (loss curve, tokens/s and the objective's own figures).
    """
    import pyarrow as pa
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = resources
    run_name = run_name or f"{objective.name}-{out_dir.parent.name}-{seed}"
    storage = out_dir.parent.parent.resolve() / "ray_train"
    datasets: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for name, rows in (("train", examples), ("heldout", heldout)):
        if rows is not None:  # every rank reads all of heldout: under ZeRO-3 a forward pass needs every rank
            objective.check(rows)
            prepared = objective.prepare(rows, model=model, max_seq_len=train.max_seq_len, resources=res)
            if isinstance(prepared, pa.Table):
                tables[name] = ray.put(prepared)
            else:
                datasets[name] = prepared
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config(train, objective=objective, model=model, seed=seed, use_gpu=res.use_gpu,
                                      heldout=heldout is not None, tables=tables),
        scaling_config=ScalingConfig(num_workers=res.train_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=None if res.use_gpu
                                     else {"CPU": res.cpus_per_train_worker}),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets or None,
        dataset_config=DataConfig(datasets_to_split=[n for n in ("train",) if n in datasets]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the Ray Train logs above")
    result.checkpoint.to_directory(str(out_dir))
    # Ray Train's copies (the final model and the last resumable state) served a restart; the model is in out_dir
    shutil.rmtree(storage / run_name, ignore_errors=True)
    return json.loads((out_dir / "train_metrics.json").read_text())
