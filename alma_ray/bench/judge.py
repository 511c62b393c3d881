"""``make bench-judge``: judge throughput through Ray Serve (handle and HTTP) against bare vLLM scoring.

One judge, one replica, the same M (prompt, response) pairs in every arm:

1. **bare**: a child process builds the judge (``alma_ray.judge.engine.Judge``: one ``vllm.LLM``) and scores
   the pairs in chunks of ``--batch`` pairs, the size a Serve replica batch holds.
2. **handle**: the judge application (``alma_ray.judge.serve``) on a local Ray; every chunk is sent at once
   through the ingress handle, the way the pipeline's Ray Data actors call it.
3. **http**: the same chunks as JSON lists, POSTed by ``--clients`` threads to 127.0.0.1; plus one pair per
   request from 64 concurrent clients (``http_single_pairs_s``), the ad-hoc path.

Each arm is timed after a warm-up call, so start-up is reported apart (``serve_startup_s``). The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alma_ray.bench import bench_args, run_bare_arm
from alma_ray.config import AlmaConfig


def _config(model: str, args: argparse.Namespace) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, generation={"checkpoints": [{"name": "a", "model": model}]},
        judge={"model": model, "max_batch_size": args.batch, "http_port": args.port},
        engine={"max_model_len": 1024, "dtype": "float32"}, resources={"cpus_per_engine": args.threads}))


def _pairs(m: int) -> list[dict[str, str]]:
    topics = ["a river", "the moon", "bread", "a city at night", "winter", "a library", "the sea", "a garden"]
    return [{"prompt": f"Write a short note about {topics[i % 8]}, number {i}.",
             "response": f"Here is a note about {topics[(i * 3) % 8]}: it is calm and {i % 17} times quiet."}
            for i in range(m)]


def _chunks(pairs: list[dict[str, str]], size: int) -> list[list[dict[str, str]]]:
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def bare(args: argparse.Namespace) -> dict[str, Any]:
    from alma_ray.judge.engine import Judge

    config = _config(args.model, args)
    t0 = time.time()
    judge = Judge(args.model, name="bench", version="b", chat=None, max_response_chars=4000, engine=config.engine,
                  use_gpu=args.gpu)
    ready = time.time()
    pairs = _pairs(args.pairs)
    judge.score([p["prompt"] for p in pairs[:8]], [p["response"] for p in pairs[:8]])  # warm-up
    start = time.time()
    for chunk in _chunks(pairs, args.batch):
        judge.score([p["prompt"] for p in chunk], [p["response"] for p in chunk])
    return {"startup_s": ready - t0, "score_s": time.time() - start}


def served(args: argparse.Namespace) -> dict[str, Any]:
    import urllib.request

    import ray

    from alma_ray.judge.serve import ROUTE, Panel, judge_service
    from alma_ray.recipes import recipe_for
    from alma_ray.runtime import init_ray

    config = _config(args.model, args)
    pairs = _pairs(args.pairs)
    chunks = _chunks(pairs, args.batch)
    url = f"http://127.0.0.1:{args.port}{ROUTE}"

    def post(body: Any) -> Any:
        request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as r:
            return json.loads(r.read())

    t0 = time.time()
    init_ray(recipe_for(config).plan(config))
    try:
        with judge_service(Panel.compare(config.judge, {"main": args.model}), config.engine,
                           config.resources) as handle:
            handle.score.remote(pairs[:8]).result()  # warm-up: the replica is up and has compiled its batch
            startup = time.time() - t0
            start = time.time()
            refs = [handle.score.remote(c) for c in chunks]
            scored = [row for ref in refs for row in ref.result()]
            handle_s = time.time() - start
            assert len(scored) == len(pairs) and not any(r["judge_flag"] for r in scored)
            post(pairs[:2])
            start = time.time()
            with ThreadPoolExecutor(args.clients) as pool:
                answers = [row for rows in pool.map(post, chunks) for row in rows]
            http_s = time.time() - start
            assert len(answers) == len(pairs)
            singles = pairs[: min(len(pairs), 256)]
            start = time.time()
            with ThreadPoolExecutor(64) as pool:
                list(pool.map(post, singles))
            single_s = time.time() - start
    finally:
        ray.shutdown()
    return {"startup_s": startup, "handle_s": handle_s, "http_s": http_s, "http_single_s": single_s,
            "singles": len(singles)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.judge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:tiny-llama", help="judge model id or folder (default: tiny)")
    p.add_argument("--pairs", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64, help="pairs per replica batch (judge.max_batch_size)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients for the list requests")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the engine")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--gpu", action="store_true")
    args = bench_args(p, argv, bare)
    if args is None:
        return 0
    print(f"bare vLLM judge: {args.pairs} pairs in chunks of {args.batch}", file=sys.stderr)
    b = run_bare_arm("alma_ray.bench.judge", [
        "--model", args.model, "--pairs", str(args.pairs), "--batch", str(args.batch), "--threads",
        str(args.threads), *(["--gpu"] if args.gpu else [])], threads=args.threads)
    bare_rate = args.pairs / b["score_s"]
    print(f"  {bare_rate:.1f} pairs/s (start-up {b['startup_s']:.1f} s)", file=sys.stderr)
    print("Ray Serve judge app, 1 replica:", file=sys.stderr)
    s = served(args)
    handle_rate, http_rate = args.pairs / s["handle_s"], args.pairs / s["http_s"]
    print(f"  handle {handle_rate:.1f} pairs/s, HTTP {http_rate:.1f} pairs/s, HTTP one pair per request "
          f"{s['singles'] / s['http_single_s']:.1f} pairs/s (start-up {s['startup_s']:.1f} s)", file=sys.stderr)
    print(json.dumps({
        "bench": "judge", "pairs": args.pairs, "bare_pairs_s": round(bare_rate, 1),
        "handle_pairs_s": round(handle_rate, 1), "http_pairs_s": round(http_rate, 1),
        "ratio_handle": round(handle_rate / bare_rate, 3), "ratio_http": round(http_rate / bare_rate, 3),
        "http_single_pairs_s": round(s["singles"] / s["http_single_s"], 1), "batch": args.batch,
        "serve_startup_s": round(s["startup_s"], 1), "bare_startup_s": round(b["startup_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
