"""``make bench-judge-step``: one training step of the judge's rating loss, the LM head at the two positions the loss
reads (``JudgeRating.loss``: ``logits_to_keep``) against the full logits of the judge prompt (the reference).

In one process, no Ray: the model is loaded with transformers (fp32 on the CPU by default; ``--device cuda
--dtype bfloat16`` on a GPU), ``--rows`` annotation rows (the synthetic MT-Bench set, rubric included, as
``judge_sft`` trains on them) make one padded micro-batch, and each arm runs a forward and backward pass
``--repeats`` times, alternating. The kept arm runs first, so the peak RSS after it is its own; on a GPU each arm's
peak memory is measured from a reset. The two arms must give the same loss (to rounding in bf16). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:gemma3-270m", help="the judge to train (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4, help="rows in the micro-batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="steps per arm (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the model's weights (default: %(default)s)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from alma_ray.judge.annotations import demo_annotations
    from alma_ray.judge.rubric import ScoreTokens
    from alma_ray.models.registry import resolve_model
    from alma_ray.train.data import _tokenizer, one_hot_ratings, pad_batch, tokenize_judge
    from alma_ray.train.losses import judge_rating_loss, score_logprobs
    from alma_ray.train.objectives import JudgeRating

    torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    rows = demo_annotations(0)[: args.rows]
    columns: dict[str, Any] = {"prompt": np.array([r["prompt"] for r in rows]),
                               "response": np.array([r["response"] for r in rows]),
                               "target": list(one_hot_ratings([r["score"] for r in rows]))}
    batch = tokenize_judge(columns, model=model_dir, max_seq_len=1 << 15, chat=None, max_response_chars=4000)
    tok = _tokenizer(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() for its own wrappers
    objective = JudgeRating().bind(tok)
    tokens = ScoreTokens.from_tokenizer(tok)

    def kept() -> Any:
        return objective.loss(model, None, batch, pad)[0]

    def full() -> Any:
        ids = pad_batch(list(batch["input_ids"]), list(batch["input_ids"]), pad, device)
        logits = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        at = torch.arange(len(rows), device=device)
        pos = torch.as_tensor(np.asarray(batch["rating_pos"]), device=device)
        lp = score_logprobs(logits[at, pos], logits[at, pos + 1], tokens.digits, tokens.ten)
        return judge_rating_loss(lp, torch.as_tensor(np.stack(batch["target"]), device=device))[0]

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
    print(json.dumps({"bench": "judge_step", "model": args.model, "rows": args.rows,
                      "tokens": [len(i) for i in batch["input_ids"]], "threads": args.threads,
                      "device": args.device, "dtype": args.dtype,
                      "kept_s": round(kept_s, 4), "full_s": round(full_s, 4), "speedup": round(full_s / kept_s, 2),
                      "kept_loss": round(losses["kept"], 5), "full_loss": round(losses["full"], 5),
                      "peak_rss_gb_after_kept": round(rss["kept"], 2),
                      "peak_rss_gb_after_full": round(rss["full"], 2), **extra}))


if __name__ == "__main__":
    main()
