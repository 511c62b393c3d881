"""``make bench-generate``: the Ray Data + vLLM pipeline against bare ``vllm.LLM.generate`` on the same work.

Four arms, in one run and one process tree, on M prompts x n samples:

1. **bare**: a child process builds one ``vllm.LLM`` and calls ``generate`` once on every request (the same
   token ids, seeds and sampling parameters the pipeline's engine actor uses), with the same thread count.
2. **pipeline**: ``generate_responses`` with one checkpoint, one engine actor, written to parquet.
3. **two pools**: two engines of the checkpoint (``resources.engines_per_checkpoint=2``), side by side.
4. **ray.data.llm**: the library's processor on the same work, end to end (it cannot return n samples from one
   request, so each prompt is n rows); kept as the reference for the "library first" decision (docs/generation.md).

Steady state is the window from the first batch an engine starts to the last batch done (reported by the engine
actors); start-up is everything before that first batch (Ray, actor processes, engine build, dispatch);
end to end is everything from ``ray.init`` to the last parquet file. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alma_ray.bench import bench_args, run_bare_arm, start_ray
from alma_ray.config import AlmaConfig
from alma_ray.ids import stable_seed

SALT = "bench:1:responses"


def _config(model: str, *, n: int, max_tokens: int, batch_size: int, threads: int, pools: int) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, judge={"model": model}, seed=0,
        generation={"n": n, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0,
                    "checkpoints": [{"name": "ckpt0", "model": model}]},
        engine={"max_model_len": 512, "batch_size": batch_size, "dtype": "float32", "kv_cache_gb": 2},
        resources={"cpus_per_engine": threads, "engines_per_checkpoint": pools}))


def _prompts(m: int) -> list[dict[str, Any]]:
    topics = ["a river", "the moon", "bread", "a city at night", "winter", "a library", "the sea", "a garden"]
    return [{"round": 1, "prompt_id": f"b{i:06d}", "cluster_id": -1,
             "prompt": f"Write a short story about {topics[i % len(topics)]}, number {i}."} for i in range(m)]


def _written_tokens(out: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_table(out, columns=["output_tokens"])["output_tokens"].to_numpy().sum())


def bare(args: argparse.Namespace) -> dict[str, Any]:
    """Arm 1, run in a child process: one engine, every request in one ``generate`` call."""
    t0 = time.time()
    from vllm import SamplingParams, TokensPrompt

    from alma_ray.engines.build import build_llm, prompt_ids, uses_chat_template

    config = _config(args.model, n=args.n, max_tokens=args.max_tokens, batch_size=args.batch_size,
                     threads=args.threads, pools=1)
    llm = build_llm(args.model, config.engine, use_gpu=args.gpu)
    tok = llm.get_tokenizer()
    chat = uses_chat_template(tok, None)
    ready = time.time()
    rows = _prompts(args.prompts)
    ids = [prompt_ids(tok, r["prompt"], chat=chat, completion_template=config.generation.completion_template)
           for r in rows]
    sampling = config.generation.sampling(config.generation.checkpoints[0])
    params = [SamplingParams(n=args.n, seed=stable_seed(SALT, "ckpt0", r["prompt_id"]), logprobs=0, **sampling)
              for r in rows]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False)
    done = time.time()
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"tokens": tokens, "startup_s": ready - t0, "generate_s": done - ready, "wall_s": done - t0}


def pipeline(args: argparse.Namespace, pools: int, out: Path) -> dict[str, Any]:
    """Arms 2 and 3: the real generation stage, on a fresh local Ray instance."""
    import ray
    import ray.data

    from alma_ray.engines.registry import Engines
    from alma_ray.progress import StageProgress
    from alma_ray.stages.generate import generate_responses, mix

    t0 = time.time()
    config = _config(args.model, n=args.n, max_tokens=args.max_tokens, batch_size=args.batch_size,
                     threads=args.threads, pools=pools)
    start_ray(args.threads * pools + 1)
    ray_init_s = time.time() - t0
    try:
        with StageProgress("generate", None, show=False) as progress:
            gen = config.generation
            with Engines(config.engine, config.resources) as engines:
                ds = generate_responses(ray.data.from_items(_prompts(args.prompts)),
                                        mix(gen, {c.name: args.model for c in gen.checkpoints}),
                                        engines=engines, completion_template=gen.completion_template,
                                        too_long=gen.too_long, seed_salt=f"{config.seed}:1:responses",
                                        pool_size=config.resources.engines_per_checkpoint, progress=progress.counter)
                ds.write_parquet(str(out))
        done = time.time()
    finally:
        ray.shutdown()
    tokens = _written_tokens(out)
    snap = progress.final
    steady_s = snap["last_done"] - snap["first_start"]
    return {"tokens": tokens, "startup_s": snap["first_start"] - t0, "engine_ready_s": snap["first_ready"] - t0,
            "ray_init_s": ray_init_s, "engine_build_s": snap["engine_build_s"],
            "steady_s": steady_s, "steady_tok_s": tokens / steady_s, "wall_s": done - t0,
            "end_to_end_tok_s": tokens / (done - t0)}


def ray_data_llm(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Arm 4, the library alternative: the same work through ``ray.data.llm`` (one engine actor).

    Ray Data LLM keeps only ``outputs[0]`` of each vLLM request (ray/llm/_internal/batch/stages/
    vllm_engine_stage.py), so n samples per prompt become n rows with n=1 and their own seeds. Its engine is
    ``AsyncLLMEngine``, which always runs the engine core in a child process; on CPU it needs an explicit CPU
    bundle (without one it asks for a GPU).
    """
    import ray
    import ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from alma_ray.engines.build import engine_env

    t0 = time.time()
    config = _config(args.model, n=args.n, max_tokens=args.max_tokens, batch_size=args.batch_size,
                     threads=args.threads, pools=1)
    sampling = config.generation.sampling(config.generation.checkpoints[0])
    start_ray(args.threads + 1)
    try:
        processor = build_processor(
            vLLMEngineProcessorConfig(
                model_source=args.model,
                engine_kwargs=dict(max_model_len=config.engine.max_model_len, seed=0, dtype="float32",
                                   enforce_eager=True, enable_chunked_prefill=False,
                                   max_num_batched_tokens=config.engine.max_model_len),
                placement_group_config={"bundles": [{"CPU": args.threads}]},
                runtime_env={"env_vars": engine_env(config.engine, use_gpu=False, cpus=args.threads)},
                batch_size=args.batch_size * args.n, concurrency=1, log_engine_metrics=False,
                chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
            ),
            preprocess=lambda row: {"prompt": row["prompt"], "prompt_id": row["prompt_id"],
                                    "sampling_params": {**sampling, "n": 1, "seed": int(row["seed"])}},
            postprocess=lambda row: {"prompt_id": row["prompt_id"], "response": row["generated_text"],
                                     "output_tokens": row["num_generated_tokens"]},
            preprocess_map_kwargs={"num_cpus": 0.1},
            postprocess_map_kwargs={"num_cpus": 0.1},
        )
        template = config.generation.completion_template
        rows = [{"prompt_id": r["prompt_id"], "prompt": template.format(prompt=r["prompt"]),
                 "seed": stable_seed(SALT, "ckpt0", r["prompt_id"], j)}
                for r in _prompts(args.prompts) for j in range(args.n)]
        processor(ray.data.from_items(rows)).write_parquet(str(out))
        done = time.time()
    finally:
        ray.shutdown()
    tokens = _written_tokens(out)
    return {"tokens": tokens, "wall_s": done - t0, "end_to_end_tok_s": tokens / (done - t0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:tiny-llama", help="model id or folder (default: the tiny model)")
    p.add_argument("--prompts", type=int, default=1024, help="M prompts")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256, help="prompts per engine call in the pipeline")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per engine (1 is fastest for small models: vLLM's CPU step is Python-bound)")
    p.add_argument("--gpu", action="store_true", help="engines on GPUs (one per pool)")
    p.add_argument("--no-ray-data-llm", dest="ray_data_llm", action="store_false",
                   help="skip the ray.data.llm arm (the library alternative, measured end to end)")
    args = bench_args(p, argv, bare)
    if args is None:
        return 0

    print(f"bare vLLM: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, {args.threads} threads",
          file=sys.stderr)
    b = run_bare_arm("alma_ray.bench.generate", [
        "--model", args.model, "--prompts", str(args.prompts), "--n", str(args.n), "--max-tokens",
        str(args.max_tokens), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        *(["--gpu"] if args.gpu else [])], threads=args.threads)
    b["tok_s"] = b["tokens"] / b["generate_s"]
    print(f"  {b['tokens']} tokens, {b['tok_s']:.0f} tok/s (start-up {b['startup_s']:.1f} s)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="alma-bench-") as tmp:
        print("pipeline, one pool:", file=sys.stderr)
        one = pipeline(args, 1, Path(tmp) / "one")
        print(f"  {one['tokens']} tokens, steady {one['steady_tok_s']:.0f} tok/s, end to end "
              f"{one['end_to_end_tok_s']:.0f} tok/s (start-up {one['startup_s']:.1f} s)", file=sys.stderr)
        print("pipeline, two pools:", file=sys.stderr)
        two = pipeline(args, 2, Path(tmp) / "two")
        print(f"  {two['tokens']} tokens, steady {two['steady_tok_s']:.0f} tok/s", file=sys.stderr)
        lib: dict[str, Any] = {}
        if args.ray_data_llm and not args.gpu:
            print("ray.data.llm, one engine (n rows of n=1 per prompt):", file=sys.stderr)
            lib = ray_data_llm(args, Path(tmp) / "lib")
            print(f"  {lib['tokens']} tokens, end to end {lib['end_to_end_tok_s']:.0f} tok/s", file=sys.stderr)
    result = {
        "bench": "generate", "output_tokens": one["tokens"], "bare_tok_s": round(b["tok_s"], 1),
        "pipeline_tok_s": round(one["steady_tok_s"], 1), "two_pool_tok_s": round(two["steady_tok_s"], 1),
        "ratio_steady": round(one["steady_tok_s"] / b["tok_s"], 3),
        "ratio_end_to_end": round(b["wall_s"] / one["wall_s"], 3),
        "startup_s": round(one["startup_s"], 1), "bare_startup_s": round(b["startup_s"], 1),
        "pipeline_end_to_end_tok_s": round(one["end_to_end_tok_s"], 1),
        "bare_output_tokens": b["tokens"], "threads": args.threads, "prompts": args.prompts, "n": args.n,
    }
    if lib:
        result["ray_data_llm_end_to_end_tok_s"] = round(lib["end_to_end_tok_s"], 1)
        result["ratio_ray_data_llm_vs_pipeline_end_to_end"] = round(
            lib["end_to_end_tok_s"] / one["end_to_end_tok_s"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
