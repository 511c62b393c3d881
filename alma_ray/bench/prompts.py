"""``make bench-prompts``: the prompt-pool stages at laptop scale, each against its reference in the same run.

1. **synthesis**: few-shot requests through the Ray Data + vLLM pipeline (``synthesize_candidates``) against a
   child process that builds one bare ``vllm.LLM`` and generates the same requests (same token ids, seeds and
   sampling). Throughput is requests/s over the steady window (first batch started -> last batch done) in both.
2. **dedup**: exact + MinHash-LSH dedup (``stages.dedup``) of pools of 10k and 20k synthetic-looking prompts
   (templated, with planted exact and near duplicates) against the seed prompts; wall time and peak RSS of the
   driver plus every Ray worker. Linear work means the 20k/10k time ratio stays near 2 (target: below 2.5).
3. **clustering**: base-model embeddings of the 20k pool (Ray Data actor), then faiss k-means with K = 1 per
   100 prompts (ALMA's ratio) trained on a sample and streaming assignment.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from alma_ray.bench import bench_args, run_bare_arm, start_ray
from alma_ray.config import AlmaConfig

VERBS = ["Write", "Explain", "Summarize", "Describe", "Compare", "List", "Draft", "Plan", "Suggest", "Outline"]
OBJECTS = ["a short story", "the history", "three arguments", "a recipe", "a lesson plan", "a product review",
           "a cover letter", "an itinerary", "a poem", "a study guide", "a press release", "a workout routine"]
TOPICS = ["about the ocean", "of the printing press", "for remote work", "using only pantry staples",
          "on photosynthesis", "for a budget laptop", "for a junior data analyst", "for two days in Lisbon",
          "about autumn in the mountains", "on the French Revolution", "for a bakery opening", "for beginners"]
EXTRAS = ["in under 200 words", "for a ten year old", "in a formal tone", "with a numbered list",
          "including one surprising fact", "as a dialogue", "in the style of a news report", "with a title",
          "avoiding technical jargon", "ending with a question"]


def synthetic_pool(n: int, seed: int = 0) -> list[str]:
    """``n`` prompt-like strings: templated combinations, 5% exact repeats (case/space changed) and 10% near
    repeats (one word changed) of earlier ones."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        r = rng.random()
        if out and r < 0.05:
            out.append("  " + rng.choice(out).upper() + " ")
        elif out and r < 0.15:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = rng.choice(["really", "quite", "new", "simple", "brief"])
            out.append(" ".join(words))
        else:
            out.append(f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TOPICS)} {rng.choice(EXTRAS)}, "
                       f"{rng.choice(EXTRAS)}; case {i}.")
    return out


def _config(model: str, *, requests: int, threads: int) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, judge={"model": model}, generation={"checkpoints": [{"name": "a", "model": model}]},
        synthesis={"seeds": ["embedded:mt-bench", "embedded:ifbench", "embedded:writingbench"],
                   "num_requests": requests, "max_tokens": 64},
        engine={"max_model_len": 2048, "batch_size": 64, "dtype": "float32", "kv_cache_gb": 2},
        resources={"cpus_per_engine": threads}))


def _seeds(config: AlmaConfig) -> list[str]:
    from alma_ray.seeds import load_seeds

    return load_seeds(config.synthesis.seeds).prompts


def bare(args: argparse.Namespace) -> dict[str, Any]:
    """The synthesis reference, in a child process: one engine, every few-shot request in one call."""
    import numpy as np
    from vllm import SamplingParams, TokensPrompt

    from alma_ray.engines.build import build_llm
    from alma_ray.ids import stable_seed
    from alma_ray.stages.synthesize import STOP, fewshot_requests

    config = _config(args.model, requests=args.requests, threads=args.threads)
    syn = config.synthesis
    salt = f"{config.seed}:synthesis"
    llm = build_llm(args.model, config.engine, use_gpu=False)
    tok = llm.get_tokenizer()
    requests = fewshot_requests({"id": np.arange(args.requests)}, seeds=_seeds(config), k=syn.k_shot, salt=salt)
    params = [SamplingParams(n=1, seed=stable_seed(salt, "base", pid), logprobs=0, temperature=syn.temperature,
                             top_p=syn.top_p, max_tokens=syn.max_tokens, stop=STOP)
              for pid in requests["prompt_id"]]
    ids = [tok.encode(p, add_special_tokens=True) for p in requests["prompt"]]
    fits = [i for i, x in enumerate(ids) if len(x) <= config.engine.max_model_len - syn.max_tokens]  # as the pipeline
    t0 = time.time()
    llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in fits], [params[i] for i in fits], use_tqdm=False)
    return {"generate_s": time.time() - t0, "requests_per_s": args.requests / (time.time() - t0)}


class PeakRSS:
    """Samples the summed RSS of this process and every Ray worker process (``ray::`` titles) until stopped."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval, self.peak = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import os

        import psutil

        total = psutil.Process(os.getpid()).memory_info().rss
        for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::") and proc.info["memory_info"] is not None:
                total += proc.info["memory_info"].rss
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def _dedup_once(texts: list[str], seeds: list[str]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import ray.data

    from alma_ray.config import DedupConfig
    from alma_ray.ids import prompt_id
    from alma_ray.stages.base import shuffle_partitions
    from alma_ray.stages.dedup import dedup, reference_rows

    candidates = pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts,
                               "order": np.arange(len(texts), dtype=np.int64)})
    with PeakRSS() as rss:
        t0 = time.time()
        result = dedup(ray.data.from_pandas(candidates), reference_rows(seeds), cfg=DedupConfig(),
                       partitions=max(2, shuffle_partitions(len(texts))))
        unique = result.unique.count()
        wall = time.time() - t0
    return {"rows": len(texts), "unique": unique, "near": result.near.count(), "wall_s": round(wall, 2),
            "peak_rss_mb": round(rss.peak / 2**20)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.prompts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:tiny-llama", help="base model (default: the tiny model)")
    p.add_argument("--requests", type=int, default=512, help="few-shot requests for the synthesis arms")
    p.add_argument("--pools", default="10000,20000", help="pool sizes for dedup (the ratio is last / first)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per engine")
    args = bench_args(p, argv, bare)
    if args is None:
        return 0
    sizes = [int(s) for s in args.pools.split(",")]
    print(f"bare vLLM: {args.requests} few-shot requests", file=sys.stderr)
    b = run_bare_arm("alma_ray.bench.prompts", ["--model", args.model, "--requests", str(args.requests),
                                                "--threads", str(args.threads)], threads=args.threads)

    import numpy as np
    import pandas as pd
    import ray
    import ray.data

    from alma_ray.engines.registry import Engines
    from alma_ray.progress import StageProgress
    from alma_ray.stages.cluster import assign_clusters, train_centroids
    from alma_ray.stages.embed import embed_prompts
    from alma_ray.stages.synthesize import Synthesize

    config = _config(args.model, requests=args.requests, threads=args.threads)
    seeds = _seeds(config)
    start_ray(args.threads + 1)
    result: dict[str, Any] = {"bench": "prompts", "model": Path(args.model).name}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"pipeline: {args.requests} few-shot requests", file=sys.stderr)
            with StageProgress("synthesis", args.requests, show=False) as progress:
                with Engines(config.engine, config.resources) as engines:
                    stage = Synthesize(config.synthesis, model=args.model, source=args.model, seeds=seeds, known=[],
                                       seed=config.seed, engines=engines)
                    stage.progress = progress.counter
                    stage.transform(None).write_parquet(f"{tmp}/synth")
            snap = progress.final
            synth_rps = args.requests / (snap["last_done"] - snap["first_start"])
            result.update(synth_requests_per_s=round(synth_rps, 2), bare_requests_per_s=round(b["requests_per_s"], 2),
                          synth_ratio_vs_bare=round(synth_rps / b["requests_per_s"], 3))

            _dedup_once(synthetic_pool(500, seed=1), seeds)  # warm-up: worker processes, imports
            runs = []
            for n in sizes:
                print(f"dedup: {n} prompts", file=sys.stderr)
                runs.append(_dedup_once(synthetic_pool(n), seeds))
                tag = f"{n // 1000}k"
                result.update({f"dedup_s_{tag}": runs[-1]["wall_s"], f"dedup_unique_{tag}": runs[-1]["unique"],
                               f"dedup_peak_rss_mb_{tag}": runs[-1]["peak_rss_mb"]})
            result[f"dedup_ratio_{sizes[-1] // 1000}k_{sizes[0] // 1000}k"] = round(
                runs[-1]["wall_s"] / runs[0]["wall_s"], 3)

            n = sizes[-1]
            print(f"embeddings + k-means: {n} prompts", file=sys.stderr)
            texts = synthetic_pool(n)
            pool = ray.data.from_pandas(pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "prompt": texts}))
            t0 = time.time()
            embed_prompts(pool, model=args.model, cfg=config.synthesis.embedding, engine=config.engine,
                          resources=config.resources).write_parquet(f"{tmp}/emb")
            embed_s = time.time() - t0
            emb = ray.data.read_parquet(f"{tmp}/emb")
            t0 = time.time()
            k = max(1, n // 100)
            centroids = train_centroids(emb, k=k, cfg=config.synthesis.clustering, rows=n, seed=0)
            train_s = time.time() - t0
            assign_clusters(emb, centroids).write_parquet(f"{tmp}/clusters")
            cluster_s = time.time() - t0
            ids = ray.data.read_parquet(f"{tmp}/clusters").select_columns(["cluster_id"]).to_pandas()["cluster_id"]
            tag = f"{n // 1000}k"
            result.update({f"embed_prompts_per_s_{tag}": round(n / embed_s, 1), "clusters": k,
                           f"cluster_s_{tag}": round(cluster_s, 2), f"kmeans_train_s_{tag}": round(train_s, 2),
                           "nonempty_clusters": int(np.unique(ids).size)})
    finally:
        ray.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
