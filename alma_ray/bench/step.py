"""``make bench-step``: one training step, the LM head only at the positions the loss reads against the full logits
of every position (the reference), on Gemma-3-270M (a 262k vocabulary: the head is most of a step's work).

- ``--loss judge``: the judge's rating loss (``JudgeRating.loss``), two positions a row: its rating slot and the slot
  after it; rows from the synthetic MT-Bench annotations, rubric included, as ``judge_sft`` trains on them.
- ``--loss sft``: next-token cross-entropy on the response tokens (``SFT.loss``, ``response_logits``): the prompt and
  the padding are skipped; rows from the laptop preset's seed SFT set (MT-Bench reference answers), cut at
  ``--max-seq-len`` as the preset cuts them. DPO reads the same positions.

In one process, no Ray: the model is loaded with transformers (fp32 on the CPU by default; ``--device cuda
--dtype bfloat16`` on a GPU), ``--rows`` rows make one padded micro-batch, and each arm runs a forward and backward
pass ``--repeats`` times, alternating. The kept arm runs first, so the peak RSS after it is its own; on a GPU each
arm's peak memory is measured from a reset. The two arms must give the same loss (to rounding in bf16). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any


def _judge_arms(model: Any, model_dir: str, rows: int, pad: int, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    import numpy as np
    import torch

    from alma_ray.judge.annotations import demo_annotations
    from alma_ray.judge.rubric import ScoreTokens
    from alma_ray.train.data import _tokenizer, one_hot_ratings, pad_batch, tokenize_judge
    from alma_ray.train.losses import judge_rating_loss, score_logprobs
    from alma_ray.train.objectives import JudgeRating

    annotations = demo_annotations(0)[:rows]
    columns: dict[str, Any] = {"prompt": np.array([r["prompt"] for r in annotations]),
                               "response": np.array([r["response"] for r in annotations]),
                               "target": list(one_hot_ratings([r["score"] for r in annotations]))}
    batch = tokenize_judge(columns, model=model_dir, max_seq_len=1 << 15, chat=None, max_response_chars=4000)
    tok = _tokenizer(model_dir)
    objective = JudgeRating().bind(tok)
    tokens = ScoreTokens.from_tokenizer(tok)

    def kept() -> Any:
        return objective.loss(model, None, batch, pad)[0]

    def full() -> Any:
        ids = pad_batch(list(batch["input_ids"]), list(batch["input_ids"]), pad, device)
        logits = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        at = torch.arange(len(annotations), device=device)
        pos = torch.as_tensor(np.asarray(batch["rating_pos"]), device=device)
        lp = score_logprobs(logits[at, pos], logits[at, pos + 1], tokens.digits, tokens.ten)
        return judge_rating_loss(lp, torch.as_tensor(np.stack(batch["target"]), device=device))[0]

    slots = {int(p) + k for p in batch["rating_pos"] for k in (0, 1)}  # the positions JudgeRating.loss keeps
    return kept, full, {"tokens": [len(i) for i in batch["input_ids"]], "positions_kept": len(slots)}


def _sft_arms(model: Any, model_dir: str, rows: int, pad: int, device: Any, max_seq_len: int
              ) -> tuple[Any, Any, dict[str, Any]]:
    import numpy as np

    from alma_ray.seed_sft import _mtbench_references
    from alma_ray.train.data import pad_batch
    from alma_ray.train.losses import response_positions, sft_loss
    from alma_ray.train.objectives import SFT

    seeds = _mtbench_references()[:rows]
    objective = SFT()
    batch = objective.tokenizer_fn(model=model_dir, max_seq_len=max_seq_len)(
        {"prompt": np.array([r["prompt"] for r in seeds]), "response": np.array([r["response"] for r in seeds])})
    inputs = pad_batch(list(batch["input_ids"]), list(batch["labels"]), pad, device)

    def kept() -> Any:
        return objective.loss(model, None, batch, pad)[0]

    def full() -> Any:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return sft_loss(logits, inputs["labels"])

    width = inputs["input_ids"].shape[1]
    return kept, full, {"tokens": [len(i) for i in batch["input_ids"]], "width": width,
                        "positions_kept": len(response_positions(inputs["labels"])), "max_seq_len": max_seq_len}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="judge", choices=["judge", "sft"], help="the loss (default: %(default)s)")
    parser.add_argument("--model", default="embedded:gemma3-270m", help="the model to train (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4, help="rows in the micro-batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="steps per arm (default: %(default)s)")
    parser.add_argument("--max-seq-len", type=int, default=256,
                        help="sft: tokens a row is cut at (default: %(default)s, the laptop preset's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the model's weights (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from alma_ray.models.registry import resolve_model
    from alma_ray.train.data import _tokenizer

    torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    tok = _tokenizer(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() for its own wrappers
    if args.loss == "judge":
        kept, full, shape = _judge_arms(model, model_dir, args.rows, pad, device)
    else:
        kept, full, shape = _sft_arms(model, model_dir, args.rows, pad, device, args.max_seq_len)

    times: dict[str, list[float]] = {"kept": [], "full": []}
    losses: dict[str, float] = {}
    rss: dict[str, float] = {}
    gpu_peak: dict[str, float] = {}
    for _ in range(args.repeats):
        for arm, step in (("kept", kept), ("full", full)):
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            loss = step()
            loss.backward()
            if cuda:
                torch.cuda.synchronize(device)
                gpu_peak[arm] = max(gpu_peak.get(arm, 0.0), torch.cuda.max_memory_allocated(device) / 1e9)
            times[arm].append(time.perf_counter() - start)
            losses[arm] = float(loss.detach())
            rss.setdefault(arm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
            print(f"{arm}: {times[arm][-1]:.3f} s, loss {losses[arm]:.5f}", flush=True)
    kept_s, full_s = min(times["kept"]), min(times["full"])
    extra = {"peak_gpu_gb_kept": round(gpu_peak["kept"], 2), "peak_gpu_gb_full": round(gpu_peak["full"], 2),
             "gpu": torch.cuda.get_device_name(device)} if cuda else {}
    print(json.dumps({"bench": "step", "loss": args.loss, "model": args.model, "rows": args.rows, **shape,
                      "threads": args.threads,
                      "device": args.device, "dtype": args.dtype,
                      "kept_s": round(kept_s, 4), "full_s": round(full_s, 4), "speedup": round(full_s / kept_s, 2),
                      "kept_loss": round(losses["kept"], 5), "full_loss": round(losses["full"], 5),
                      "peak_rss_gb_after_kept": round(rss["kept"], 2),
                      "peak_rss_gb_after_full": round(rss["full"], 2), **extra}))


if __name__ == "__main__":
    main()
