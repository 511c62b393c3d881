"""``make bench-almost``: ALMoST's sampling stages against bare vLLM on the same requests, and self-play's turn rate.

On the tiny model (or ``--model``), in one run:

1. **bare** (a child process, one ``vllm.LLM``, the same thread count): the mining requests (``--requests``
   few-shot requests over the seeds, ALMoST's sampling) in one ``generate`` call, then the grid's requests (each of
   ``--prompts`` prompts framed by each configuration of the tiny preset's grid) in another; requests per second.
2. **mining**: the ``Mine`` stage with one wave (so its requests equal the bare arm's) through the run's engines;
   requests per second over the engine's busy window (steady) and over the stage's wall time.
3. **grid**: the ``ConfiguredResponses`` stage on the same prompts; responses per second, steady and end to end.
4. **selfplay**: the ``SelfPlay`` stage (k candidates, T turns) against a reward model with a random head (the
   rate does not depend on what it learned), served by the run's reward app; assistant turns per second; the
   seconds its batches spent waiting on sampling calls and on RM calls (summed over batches, which run two at a
   time: ``calls_per_wall_s`` says how many overlap), their shares of that call time, and the share of the wall
   time the sampling engine was idle (scoring, dispatch and the driver).

Last line: one JSON object. Target (issue 17): mining and grid sampling >= 0.9x bare (steady).
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

PRESET = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "almost-tiny.yaml"


def _config(args: argparse.Namespace, out: str) -> Any:
    from alma_ray.config import load_config

    return load_config(PRESET, [f"base_model={args.model}", f"output_dir={out}",
                                f"mining.num_requests={args.requests}", f"mining.wave={args.requests}",
                                f"selfplay.k={args.k}", f"selfplay.turns={args.turns}",
                                f"selfplay.prompts={args.prompts}", f"resources.cpus_per_engine={args.threads}",
                                f"engine.batch_size={args.batch_size}"])


def _prompts(n: int) -> list[str]:
    from alma_ray.seeds import load_seeds

    return load_seeds(["embedded:tiny"]).prompts[:n]


def bare(args: argparse.Namespace) -> dict[str, Any]:
    """Arm 1, in a child process: the mining and the grid requests, each in one ``generate`` call."""
    from vllm import SamplingParams, TokensPrompt

    from alma_ray.demonstrations import TURN_STOP, load_demonstrations, prompted
    from alma_ray.engines.build import build_llm
    from alma_ray.ids import prompt_id, stable_seed
    from alma_ray.seeds import heldout_and_pool, load_seeds
    from alma_ray.stages.mine import STOP, mining_request

    config = _config(args, "/tmp")
    m = config.mining
    llm = build_llm(args.model, config.engine, use_gpu=False)
    tok = llm.get_tokenizer()
    _, pool = heldout_and_pool(load_seeds(m.seeds).prompts, heldout=m.heldout, seed=config.seed)
    salt = f"{config.seed}:mining"
    texts = [mining_request(pool, m.shots, stable_seed(salt, i)) for i in range(m.num_requests)]
    params = [SamplingParams(n=1, seed=stable_seed(salt, "base", f"request-{i}"), temperature=m.temperature,
                             top_p=m.top_p, max_tokens=m.max_tokens, stop=STOP) for i in range(m.num_requests)]
    t0 = time.time()
    llm.generate([TokensPrompt(prompt_token_ids=tok.encode(t)) for t in texts], params, use_tqdm=False)
    mining_s = time.time() - t0
    demos = {name: load_demonstrations(src) for name, src in config.demonstrations.items()}
    r = config.responses
    grid = [(p, g) for p in _prompts(args.prompts) for g in r.grid]
    texts = [prompted(demos[g.demos], g.shots, [{"role": "human", "text": p}]) for p, g in grid]
    params = [SamplingParams(n=1, seed=stable_seed(f"{config.seed}:responses", "base", prompt_id(f"{prompt_id(p)}/"
                                                                                              f"{g.name}")),
                             temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, stop=TURN_STOP)
              for p, g in grid]
    t0 = time.time()
    llm.generate([TokensPrompt(prompt_token_ids=tok.encode(t)) for t in texts], params, use_tqdm=False)
    return {"mining_requests": m.num_requests, "mining_s": mining_s, "mining_req_s": m.num_requests / mining_s,
            "grid_requests": len(grid), "grid_s": time.time() - t0, "grid_req_s": len(grid) / (time.time() - t0)}


def _random_rm(model: str, out: Path) -> str:
    """A reward model with a random scalar head on ``model`` (what ``fit(objective="reward")`` writes)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rm = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def pipeline(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Arms 2-4 on one fresh local Ray instance, through the run's engines."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from alma_ray.demonstrations import DIALOGUE_TEMPLATE, load_demonstrations
    from alma_ray.engines.registry import Engines
    from alma_ray.ids import prompt_id
    from alma_ray.reward import RewardServer
    from alma_ray.seeds import heldout_and_pool, load_seeds
    from alma_ray.stages.configured import ConfiguredResponses
    from alma_ray.stages.mine import Mine
    from alma_ray.stages.selfplay import SelfPlay

    config = _config(args, str(tmp))
    m = config.mining
    _, pool = heldout_and_pool(load_seeds(m.seeds).prompts, heldout=m.heldout, seed=config.seed)
    demos = {name: load_demonstrations(src) for name, src in config.demonstrations.items()}
    prompts = tmp / "prompts"
    prompts.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": p, "prompt_id": prompt_id(p), "reject": "", "source": "bench",
                                          "wave": 0, "request_index": i}
                                         for i, p in enumerate(_prompts(args.prompts))]), prompts / "p.parquet")
    start_ray(args.threads + 3)
    out: dict[str, Any] = {}
    try:
        with Engines(config.engine, config.resources) as engines:
            # build the engine (and wait for it) before any arm is timed, as a run keeps it up between stages
            ray.get([actor.holds.remote() for actor in engines.samplers(args.model, 1)])
            t0 = time.time()
            mined = Mine(m, args.model, "bench", pool, [], config.seed, engines).write(None, _fresh(tmp / "mined"))
            out["mining"] = {"requests": m.num_requests, "wall_s": time.time() - t0, "busy_s": mined.stats["busy_s"],
                             "filter_s": mined.stats["filter_s"],
                             "req_s": m.num_requests / mined.stats["busy_s"],
                             "end_to_end_req_s": m.num_requests / (time.time() - t0)}
            stage = ConfiguredResponses(config.responses, config.seed, demos,
                                        {g.name: args.model for g in config.responses.grid}, engines)
            t0 = time.time()
            grid = stage.write(ray.data.read_parquet(str(prompts)), _fresh(tmp / "responses"))
            wall = time.time() - t0
            out["grid"] = {"responses": grid.rows, "wall_s": wall, "busy_s": grid.stats["busy_s"],
                           "req_s": grid.rows / grid.stats["busy_s"], "end_to_end_req_s": grid.rows / wall}
            server = RewardServer(_random_rm(args.model, tmp / "rm"), DIALOGUE_TEMPLATE, 256, label="random-head")
            engines.app(server)
            player = config.player
            play = SelfPlay(config.selfplay, player.name, args.model, demos[player.demos], player.shots, server,
                            engines, config.seed)
            play.bind(prompts, None)
            t0 = time.time()
            done = play.write(ray.data.read_parquet(str(prompts)), _fresh(tmp / "selfplay"))
            wall = time.time() - t0
            s = done.stats
            calls = s["sampling_s"] + s["scoring_s"]
            out["selfplay"] = {"dialogues": s["dialogues"], "turns": s["assistant_turns"], "k": args.k,
                               "wall_s": wall, "turns_s": s["assistant_turns"] / wall,
                               "sampling_s": s["sampling_s"], "scoring_s": s["scoring_s"],
                               "sampling_share": s["sampling_s"] / calls, "scoring_share": s["scoring_s"] / calls,
                               "calls_per_wall_s": calls / wall, "engine_busy_s": s["busy_s"],
                               "engine_idle_share": 1 - (s["busy_s"] or 0.0) / wall}
    finally:
        ray.shutdown()
    return out


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:tiny-llama")
    parser.add_argument("--requests", type=int, default=256, help="mining requests (one wave)")
    parser.add_argument("--prompts", type=int, default=48, help="prompts for the grid and self-play")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per batch handed to an engine")
    args = bench_args(parser, argv, bare)
    if args is None:
        return 0
    flags = ["--model", args.model, "--requests", str(args.requests), "--prompts", str(args.prompts),
             "--k", str(args.k), "--turns", str(args.turns), "--threads", str(args.threads),
             "--batch-size", str(args.batch_size)]
    reference = run_bare_arm("alma_ray.bench.almost", flags, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        arms = pipeline(args, Path(tmp))
    result = {"bench": "almost", "model": args.model, "bare": reference, **arms,
              "mining_vs_bare": arms["mining"]["req_s"] / reference["mining_req_s"],
              "grid_vs_bare": arms["grid"]["req_s"] / reference["grid_req_s"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
