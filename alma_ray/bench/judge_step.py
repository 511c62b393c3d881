"""``make bench-judge-step``: one training step of the judge's rating loss, the LM head at the two positions the loss
reads (``JudgeRating.loss``: ``logits_to_keep``) against the full logits of the judge prompt (the reference).

In one process, no Ray: the model is loaded with transformers in fp32, ``--rows`` annotation rows (the synthetic
MT-Bench set, rubric included, as ``judge_sft`` trains on them) make one padded micro-batch, and each arm runs a
forward and backward pass ``--repeats`` times, alternating. The kept arm runs first, so the peak RSS after it is
its own. The two arms must give the same loss. The last line is one JSON object.
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
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    objective = JudgeRating().bind(tok)
    tokens = ScoreTokens.from_tokenizer(tok)

    def kept() -> Any:
        return objective.loss(model, None, batch, pad)[0]

    def full() -> Any:
        ids = pad_batch(list(batch["input_ids"]), list(batch["input_ids"]), pad)
        logits = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        at, pos = torch.arange(len(rows)), torch.as_tensor(np.asarray(batch["rating_pos"]))
        lp = score_logprobs(logits[at, pos], logits[at, pos + 1], tokens.digits, tokens.ten)
        return judge_rating_loss(lp, torch.as_tensor(np.stack(batch["target"])))[0]

    times: dict[str, list[float]] = {"kept": [], "full": []}
    losses: dict[str, float] = {}
    rss: dict[str, float] = {}
    for _ in range(args.repeats):
        for arm, step in (("kept", kept), ("full", full)):
            model.zero_grad()
            start = time.perf_counter()
            loss = step()
            loss.backward()
            times[arm].append(time.perf_counter() - start)
            losses[arm] = float(loss.detach())
            rss.setdefault(arm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
            print(f"{arm}: {times[arm][-1]:.1f} s, loss {losses[arm]:.5f}", flush=True)
    kept_s, full_s = min(times["kept"]), min(times["full"])
    print(json.dumps({"bench": "judge_step", "model": args.model, "rows": args.rows,
                      "tokens": [len(i) for i in batch["input_ids"]], "threads": args.threads,
                      "kept_s": round(kept_s, 2), "full_s": round(full_s, 2), "speedup": round(full_s / kept_s, 2),
                      "kept_loss": round(losses["kept"], 5), "full_loss": round(losses["full"], 5),
                      "peak_rss_gb_after_kept": round(rss["kept"], 2),
                      "peak_rss_gb_after_full": round(rss["full"], 2)}))


if __name__ == "__main__":
    main()
