"""``make measure-selection``: plain best-of-N against length-controlled selection on the same scores.

A quality measurement, not a speed one, read from a finished ALMA run (no Ray, no engine): for every round's
committed ``scores``, what each rule picks per prompt with the recipe's own functions (``alma_ray.stages.select``):
the picks' mean length in characters and mean score, against all valid responses', with the round's
score~length correlation and slope (``Score.figures``); and, where the run evaluated, how long its held-out answers
were and how many came back empty (what the next model did with the run's own rule). The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq


def measure(run_dir: Path) -> dict[str, Any]:
    from alma_ray.stages.select import LengthControl, pick_best

    rounds: dict[str, Any] = {}
    for scores_dir in sorted(run_dir.glob("round_*/scores")):
        manifest = json.loads((scores_dir / "_MANIFEST.json").read_text())
        fit = manifest["stats"]
        rows = pq.read_table(scores_dir, columns=["prompt_id", "checkpoint", "sample_index", "response", "score",
                                                  "judge_flag"]).to_pandas()
        valid = rows[rows.judge_flag == ""]
        slope = fit.get("score_length_slope")
        if slope is None:  # a run from before the slope was recorded: fit it here, as Score.figures does
            chars = valid.response.str.len().astype(float)
            slope = float(((chars - chars.mean()) * (valid.score - valid.score.mean())).mean() / chars.var(ddof=0))
        control = LengthControl(slope, float(valid.response.str.len().mean()))
        picks = {name: pd.concat([pick_best(g, length) for _, g in valid.groupby("prompt_id", sort=True)])
                 for name, length in (("best", None), ("length_controlled", control))}
        r = scores_dir.parent.name
        rounds[r] = {"responses": len(rows), "valid": len(valid), "score_length_corr": fit.get("score_length_corr"),
                     "slope_per_100_chars": round(100 * slope, 4),
                     "mean_chars_all": round(float(valid.response.str.len().mean()), 1),
                     **{f"{name}_mean_chars": round(float(p.response.str.len().mean()), 1)
                        for name, p in picks.items()},
                     **{f"{name}_mean_score": round(float(p.score.mean()), 3) for name, p in picks.items()},
                     "same_pick": sum(a == b for a, b in zip(*(list(zip(p.checkpoint, p.sample_index))
                                                               for p in picks.values())))}
        probe = scores_dir.parent / "probe"
        if (probe / "_MANIFEST.json").exists():
            answers = pq.read_table(probe, columns=["response"]).to_pandas()
            rounds[r]["heldout_mean_chars"] = round(float(answers.response.str.len().mean()), 1)
            rounds[r]["heldout_empty"] = int((answers.response.str.strip() == "").sum())
    return {"run_dir": str(run_dir), "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m alma_ray.bench.selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished ALMA run directory (its round_NNN/scores)")
    args = p.parse_args(argv)
    result = measure(args.run_dir.resolve())
    if not result["rounds"]:
        raise SystemExit(f"{args.run_dir}: no committed round_NNN/scores (run ALMA first)")
    for r, row in result["rounds"].items():
        print(f"{r}: picks {row['best_mean_chars']} chars (best) vs {row['length_controlled_mean_chars']} "
              f"(length-controlled) of {row['mean_chars_all']}; score~length r {row['score_length_corr']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
