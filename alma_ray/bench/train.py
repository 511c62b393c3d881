"""``make bench-train``: the same training twice in one run, bare DeepSpeed under ``torchrun`` and through Ray Train.

Both arms train the same model on the same rows for the same number of steps with the same code
(``alma_ray.train.loop.Worker``: DeepSpeed engine, length-bucketed micro-batches, the objective's loss):

1. **bare**: ``torchrun --nproc_per_node W`` runs ``Worker`` on every rank over a static slice of the rows.
2. **ray**: ``alma_ray.train.loop.fit``: each worker takes its share of the raw rows (one table in the object
   store, as a stage does for small examples; ``--stream``: Ray Data streams the shards), ``TorchTrainer``
   runs W workers, rank 0 saves the model as an HF folder.

Steady state is rank 0's real (non-padding) tokens/s after the first quarter of its steps; start-up is the time
from launch (``ray.init`` for Ray) to rank 0's first step. The model defaults to a small random Llama built
on the spot (about 3M parameters, the tiny model's tokenizer) so the figures measure the loop, not a model
download; ``--model`` takes any HF folder or embedded id. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from alma_ray.config import AlmaConfig


def _objective(config: AlmaConfig, loss: str) -> Any:
    from alma_ray.train.objectives import DPO, SFT, Reward

    template = config.generation.completion_template
    if loss == "dpo":
        return DPO.of(config.train, completion_template=template)
    return SFT(template) if loss == "sft" else Reward(template)


def _config(model: str, args: argparse.Namespace) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, judge={"model": model}, generation={"checkpoints": [{"name": "a", "model": model}]},
        train={"micro_batch": args.micro_batch, "max_seq_len": args.max_seq_len, "lr": 1e-4, "epochs": args.epochs,
               "zero_stage": args.zero_stage, "bucket_window": args.bucket_window, "report_every": 10**6,
               # both arms run the same step: the bare one has no Ray Data pass to precompute the reference's
               # log-probs, so DPO's reference runs in the step (train.dpo_reference, docs/training.md)
               "dpo_reference": "online"},
        resources={"train_workers": args.workers}))


def _rows(n: int, loss: str, seed: int = 0) -> list[dict[str, str]]:
    """Prompts and responses of varied length (4 to 120 words) from the tiny seed vocabulary."""
    from alma_ray.seeds import TINY_SEEDS_PATH

    words = " ".join(json.loads(line)["prompt"] for line in TINY_SEEDS_PATH.read_text().splitlines()
                     if line.strip()).lower().split()
    rng = np.random.default_rng(seed)

    def text(k: int) -> str:
        return " ".join(words[i] for i in rng.integers(0, len(words), size=k))

    rows = []
    for _ in range(n):
        prompt = text(int(rng.integers(4, 24)))
        if loss == "sft":
            rows.append({"prompt": prompt, "response": text(int(rng.integers(4, 120)))})
        else:
            rows.append({"prompt": prompt, "chosen": text(int(rng.integers(4, 120))),
                         "rejected": text(int(rng.integers(4, 120)))})
    return rows


def bare_worker(args: argparse.Namespace) -> None:
    """One torchrun rank: the loop of ``train_loop`` over a static slice of the rows, no Ray anywhere."""
    import torch.distributed as dist

    from alma_ray.train.data import windows
    from alma_ray.train.loop import Worker, loop_config

    config = _config(args.model, args)
    worker = Worker.start(loop_config(config.train, objective=_objective(config, args.loss), model=args.model,
                                      seed=0, use_gpu=args.gpu))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = _rows(args.rows, args.loss)[rank::world]
    data = {k: np.array([r[k] for r in rows]) for k in rows[0]}  # raw rows: the worker tokenizes, as under Ray
    size = worker.train.micro_batch * worker.train.bucket_window
    for _, batch, last in worker.schedule(lambda _: windows(data, size)):
        worker.step += 1
        worker.run_step(batch, last=last)
    if rank == 0:
        Path(args.out).write_text(json.dumps({k: v for k, v in worker.summary().items() if k != "losses"}))
    dist.barrier()


def bare(args: argparse.Namespace, model: str, out: Path) -> dict[str, Any]:
    t0 = time.time()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.workers}",
           "-m", "alma_ray.bench.train", "--arm", "bare", "--model", model, "--out", str(out),
           *_shared_flags(args)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE if not args.verbose else None)
    metrics: dict[str, Any] = json.loads(out.read_text())
    metrics["startup_s"] = metrics["first_step_at"] - t0
    metrics["to_loop_s"] = metrics["entered_at"] - t0
    metrics["wall_s"] = time.time() - t0
    return metrics


def ray_arm(args: argparse.Namespace, model: str, tmp: Path) -> dict[str, Any]:
    import pyarrow as pa
    import ray
    import ray.data

    from alma_ray.recipes import recipe_for
    from alma_ray.runtime import init_ray
    from alma_ray.train.loop import fit

    t0 = time.time()
    config = _config(model, args)
    init_ray(recipe_for(config).plan(config))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_init_s = time.time() - t0
    t_fit = time.time()
    try:
        rows = _rows(args.rows, args.loss)  # as a stage hands them over: one small table, or streamed (--stream)
        examples = ray.data.from_items(rows) if args.stream else pa.Table.from_pylist(rows)
        metrics = fit(examples, _objective(config, args.loss),
                      train=config.train, resources=config.resources, model=model,
                      out_dir=tmp / "round_001" / args.loss, seed=0)
    finally:
        ray.shutdown()
    metrics["ray_init_s"] = ray_init_s
    metrics["startup_s"] = metrics["first_step_at"] - t0
    metrics["to_loop_s"] = metrics["entered_at"] - t_fit
    metrics["wall_s"] = time.time() - t0
    return metrics


def _startup_split(arm: str, m: dict[str, Any]) -> dict[str, float]:
    """Where an arm's start-up goes: until its ranks' loop runs (the processes; under Ray also the TrainController,
    the worker group and its process group), building the engine (imports, model load, ``deepspeed.initialize``;
    under torchrun also joining the process group), then waiting for the first batch (under Ray the streaming
    split; both arms tokenize their first window in the worker)."""
    return {f"{arm}_to_loop_s": round(m["to_loop_s"], 1),
            f"{arm}_engine_build_s": round(m["ready_at"] - m["entered_at"], 1),
            f"{arm}_to_first_batch_s": round(m["first_step_at"] - m["ready_at"], 1)}


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--loss", args.loss, "--rows", str(args.rows), "--epochs", str(args.epochs), "--workers",
            str(args.workers), "--micro-batch", str(args.micro_batch), "--max-seq-len", str(args.max_seq_len),
            "--zero-stage", str(args.zero_stage), "--bucket-window", str(args.bucket_window),
            *(["--gpu"] if args.gpu else [])]


def _bench_model(tmp: Path) -> str:
    from alma_ray.models.tiny import build_tiny_llama

    return str(build_tiny_llama(tmp / "bench-llama", hidden_size=256, layers=4))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF folder or embedded id (default: a ~3M-parameter random Llama)")
    p.add_argument("--loss", choices=["sft", "dpo", "reward"], default="sft")
    p.add_argument("--rows", type=int, default=512, help="training rows (pairs for dpo/reward)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="ranks in both arms")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--bucket-window", type=int, default=16, help="length bucketing window in micro-batches; 1: off")
    p.add_argument("--gpu", action="store_true", help="one GPU per rank, NCCL, bf16")
    p.add_argument("--stream", action="store_true",
                   help="Ray arm: stream the rows through Ray Data instead of the small path's one table "
                        "(alma_ray.train.data.Examples)")
    p.add_argument("--verbose", action="store_true", help="show the torchrun ranks' output")
    p.add_argument("--arm", choices=["all", "bare"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm == "bare":
        bare_worker(args)
        return 0

    from alma_ray.models.registry import resolve_model
    from alma_ray.train.data import padding_fraction, tokenize_sft

    with tempfile.TemporaryDirectory(prefix="alma-bench-train-") as tmp_dir:
        tmp = Path(tmp_dir)
        model = resolve_model(args.model) if args.model else _bench_model(tmp)
        rows = _rows(args.rows, args.loss)
        if args.loss == "sft":
            lengths = np.array([len(x) for x in tokenize_sft(
                {k: np.array([r[k] for r in rows]) for k in rows[0]}, model=model, max_seq_len=args.max_seq_len,
                completion_template=_config(model, args).generation.completion_template)["input_ids"]])
            pad = {"padding_unbucketed": round(padding_fraction(lengths, args.micro_batch, window=1), 3),
                   "padding_bucketed": round(padding_fraction(lengths, args.micro_batch,
                                                              window=args.bucket_window), 3)}
            print(f"padding share of micro-batches: {pad['padding_unbucketed']:.1%} in arrival order, "
                  f"{pad['padding_bucketed']:.1%} bucketed (window {args.bucket_window})", file=sys.stderr)
        else:
            pad = {}
        print(f"bare DeepSpeed, torchrun x{args.workers}: {args.loss}, {args.rows} rows, ZeRO-{args.zero_stage}",
              file=sys.stderr)
        b = bare(args, model, tmp / "bare.json")
        print(f"  {b['steps']} steps, steady {b['steady_tokens_per_s_rank0']:.0f} tok/s (rank 0), "
              f"start-up {b['startup_s']:.1f} s", file=sys.stderr)
        print(f"Ray Train x{args.workers}:", file=sys.stderr)
        r = ray_arm(args, model, tmp)
        print(f"  {r['steps']} steps, steady {r['steady_tokens_per_s_rank0']:.0f} tok/s (rank 0), "
              f"start-up {r['startup_s']:.1f} s (ray.init {r['ray_init_s']:.1f} s)", file=sys.stderr)
    if b["steps"] != r["steps"]:
        print(f"warning: step counts differ (bare {b['steps']}, ray {r['steps']})", file=sys.stderr)
    result = {
        "bench": "train", "loss": args.loss, "ray_rows": "stream" if args.stream else "table",
        "bare_tok_s": round(b["steady_tokens_per_s_rank0"], 1),
        "ray_tok_s": round(r["steady_tokens_per_s_rank0"], 1),
        "ratio": round(r["steady_tokens_per_s_rank0"] / b["steady_tokens_per_s_rank0"], 3),
        "ray_startup_s": round(r["startup_s"], 1), "bare_startup_s": round(b["startup_s"], 1),
        "ray_init_s": round(r["ray_init_s"], 1), "ray_wall_s": round(r["wall_s"], 1),
        "bare_wall_s": round(b["wall_s"], 1), "steps": r["steps"], "workers": args.workers,
        **_startup_split("bare", b), **_startup_split("ray", r),
        "zero_stage": args.zero_stage, "bare_loss": round(b["loss"], 4), "ray_loss": round(r["loss"], 4), **pad,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
