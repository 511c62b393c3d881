"""``make bench-embed``: prompt embeddings through vLLM's pooling runner vs the transformers backbone.

This measurement picks ``synthesis.embedding.backend``. Both arms embed the same prompts with the pipeline's
default (mean over the last layer's hidden states after the final norm, unit length, prompts cut at
``embedding.max_tokens`` tokens), each in its own child process with the same OpenMP threads and no Ray:

1. **transformers**: ``stages.embed.Embedder`` (the backbone, batches padded to their longest prompt).
2. **vllm**: ``stages.embed.VLLMEmbedder`` (``vllm.LLM(runner="pooling", convert="embed")``, MEAN pooling).

Each arm is the actor class the pipeline's Ray Data pool runs (``embedding.backend``), called in batches of
``embedding.batch_size`` prompts as Ray Data would call it.

Throughput is prompts/s after a warm-up batch; the vectors of the two arms are compared (cosine per prompt) to show
that they compute the same thing. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alma_ray.bench import bench_args, run_bare_arm
from alma_ray.config import EmbeddingConfig, EngineConfig

DEFAULT_PROMPTS = ["embedded:mt-bench", "embedded:ifbench", "embedded:writingbench"]


def _prompts(args: argparse.Namespace) -> list[str]:
    from alma_ray.seeds import load_seeds

    prompts = load_seeds(args.prompts, max_chars=100_000).prompts
    return (prompts * (args.count // len(prompts) + 1))[:args.count] if args.count else prompts


def _embed(args: argparse.Namespace, prompts: list[str], cfg: EmbeddingConfig) -> tuple[Any, float, float]:
    """Build the arm's actor, warm it up on one batch, then time every prompt in batches of ``cfg.batch_size``."""
    import numpy as np

    from alma_ray.stages.embed import Embedder, VLLMEmbedder

    t0 = time.time()
    actor: Embedder | VLLMEmbedder
    if cfg.backend == "vllm":
        actor = VLLMEmbedder(args.model, cfg=cfg, engine=EngineConfig(dtype="float32", kv_cache_gb=2), use_gpu=False)
    else:
        actor = Embedder(args.model, cfg=cfg, use_gpu=False)
    batches = [np.array(prompts[i:i + cfg.batch_size], dtype=object) for i in range(0, len(prompts), cfg.batch_size)]
    actor({"prompt": batches[0]})  # warm-up
    startup, t0 = time.time() - t0, time.time()
    vectors = np.concatenate([actor({"prompt": b})["embedding"] for b in batches])
    return vectors, startup, time.time() - t0


def bare(args: argparse.Namespace) -> dict[str, Any]:
    """One arm (``--backend``), in a child process: embed every prompt, save the vectors to ``--out``."""
    import numpy as np

    prompts = _prompts(args)
    cfg = EmbeddingConfig(backend=args.backend, batch_size=args.batch, max_tokens=args.max_tokens)
    vectors, startup, seconds = _embed(args, prompts, cfg)
    np.save(args.out, vectors)
    return {"prompts": len(prompts), "startup_s": round(startup, 1), "embed_s": round(seconds, 2),
            "prompts_per_s": round(len(prompts) / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:tiny-llama", help="base model id or folder (default: tiny; the "
                   "laptop base model is embedded:gemma3-270m)")
    p.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS, metavar="SOURCE",
                   help="JSONL/parquet files with a 'prompt' column, or embedded:<set> (default: the three "
                   "packaged seed sets); a pool's parquet files work too")
    p.add_argument("--count", type=int, default=2048, help="prompts to embed, cycling the sources (0: each once)")
    p.add_argument("--batch", type=int, default=EmbeddingConfig().batch_size,
                   help="prompts per actor call, both arms (embedding.batch_size)")
    p.add_argument("--max-tokens", type=int, default=EmbeddingConfig().max_tokens, help="prompt tokens embedded")
    p.add_argument("--threads", type=int, default=2, help="OpenMP threads per arm")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = bench_args(p, argv, bare)
    if args is None:
        return
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--model", args.model, "--prompts", *args.prompts, "--count", str(args.count), "--batch",
                 str(args.batch), "--max-tokens", str(args.max_tokens)]
        arms, vectors = {}, {}
        for backend in ("transformers", "vllm"):
            out = str(Path(tmp) / f"{backend}.npy")
            print(f"[bench-embed] {backend} ...", file=sys.stderr, flush=True)
            arms[backend] = run_bare_arm("alma_ray.bench.embed", [*flags, "--backend", backend, "--out", out],
                                         threads=args.threads)
            vectors[backend] = np.load(out)
            print(f"[bench-embed] {backend}: {arms[backend]}", file=sys.stderr, flush=True)
    cosine = (vectors["transformers"] * vectors["vllm"]).sum(axis=1)
    hf, vl = arms["transformers"], arms["vllm"]
    print(json.dumps({
        "bench": "embed", "model": Path(args.model).name, "prompts": hf["prompts"], "threads": args.threads,
        "max_tokens": args.max_tokens, "batch": args.batch,
        "transformers_prompts_s": hf["prompts_per_s"], "vllm_prompts_s": vl["prompts_per_s"],
        "ratio_vllm_vs_transformers": round(vl["prompts_per_s"] / hf["prompts_per_s"], 3),
        "transformers_startup_s": hf["startup_s"], "vllm_startup_s": vl["startup_s"],
        "cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6)}))


if __name__ == "__main__":
    main()
