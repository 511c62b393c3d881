"""ALMA's report sections. Round 0 shows how the prompt pool was made (filter yields, dedup, cluster sizes, pool
diversity) and the judge's held-out accuracy table; a training round shows its draw (cluster draw vs a random draw
of as many unused prompts), scores, selection and the SFT loss curve, and every round its evaluation (the held-out
prompts' scores by each judge, win rates, length). ``write_all`` also writes the run's table of rounds
(``rounds.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alma_ray.judge.annotations import accuracy_table, kinds_table
from alma_ray.report import bar_plot, line_plot, manifests, score_plot, table, write_report
from alma_ray.store import Manifest, atomic_write_text


def pool_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "synthesis" in ms:
        filters = ms["synthesis"].stats["filters"]
        total = sum(filters.values())
        lines += ["## Prompt synthesis: filter yields", ""]
        lines += table(["filter", "rows", "share"],
                        [[k, v, v / total if total else 0.0] for k, v in filters.items()])
    if "pool" in ms:
        s = ms["pool"].stats
        lines += ["## Dedup", ""]
        lines += table(["passed filters", "exact duplicates", "near duplicates", "near duplicates of seeds",
                         "unique prompts"],
                        [[s["passed_filters"], s["duplicate_exact"], s["near_duplicate"],
                          s["near_duplicate_of_seed"], ms["pool"].rows]])
    if "clusters" in ms:
        s = ms["clusters"].stats
        hist = s["size_histogram"]  # the manifest's keys come back sorted as text: order the bins by size
        hist = {b: hist[b] for b in sorted(hist, key=lambda b: int(b.split("-")[0]))}
        plot = bar_plot(round_dir / "report_cluster_sizes.png", f"cluster sizes (K={s['clusters']})",
                         list(hist), {"clusters": list(hist.values())}, "clusters")
        lines += ["## Clusters", "", f"K = {s['clusters']}, non-empty {s['nonempty_clusters']}, largest "
                  f"{s['largest_cluster']} prompts; k-means trained in {s['kmeans_train_s']} s.", "",
                  f"![cluster sizes]({plot})", "", "Pool diversity (sample):", ""]
        d = s["diversity"]
        lines += table(list(d), [list(d.values())])
    if "judge_gate" in ms:
        g = ms["judge_gate"].stats
        lines += ["## Judge gate", "", f"{g['judge']} on {g['preference_set']} ({g['pairs']} pairs): real-valued "
                  f"accuracy {g['accuracy']:.3f}.", "", accuracy_table(g["table"]), ""]
    if "judge_eval" in ms:
        t = ms["judge_eval"].stats["table"]
        lines += ["## Judge: held-out pairwise accuracy", "", accuracy_table(t), ""]
        if kinds := kinds_table(t):
            lines += ["What each judge tells apart (real-valued accuracy per kind of held-out pair):", "", kinds, ""]
    if "distill_scores" in ms and (figure := score_plot(
            round_dir / "distill_scores", round_dir / "report_judge_scores.png", "fine-tuned judge, distill pairs")):
        lines += ["Self-distillation targets: the fine-tuned judge's scores of the distill pairs.", "",
                  f"![judge scores]({figure})", ""]
    return lines


def round_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "prompts" in ms and "diversity" in ms["prompts"].stats:  # runs older than the pool have no draw metrics
        s = ms["prompts"].stats
        draws = s["diversity"]
        keys = [k for k in draws["cluster_draw"] if k != "prompts"]
        lines += ["## Prompts: cluster draw vs random draw", "",
                  f"{ms['prompts'].rows} prompts from as many clusters; {s['ledger_before']} prompts used by earlier "
                  f"rounds, {s['unused_prompts']} unused in {s['clusters_available']} clusters before this draw.", ""]
        lines += table(["metric", "cluster draw", "random draw"],
                        [[k, draws["cluster_draw"][k], draws["random_draw"][k]] for k in keys])
        plot = bar_plot(round_dir / "report_diversity.png", "prompt diversity (sample)", keys,
                         {name: [float(draws[name][k]) / (float(draws["cluster_draw"][k]) or 1.0) for k in keys]
                          for name in ("cluster_draw", "random_draw")}, "relative to the cluster draw")
        lines += [f"![diversity]({plot})", ""]
    facts = []
    if "scores" in ms:
        facts.append(["mean judge score, all responses", ms["scores"].stats.get("mean_score")])
        facts.append(["flagged responses", ms["scores"].stats.get("flagged")])
        facts.append(["mean length of the scored responses (chars)", ms["scores"].stats.get("mean_chars")])
        facts.append(["correlation of score with length (Pearson)", ms["scores"].stats.get("score_length_corr")])
    if "selected" in ms:
        facts.append(["mean score, best of N", ms["selected"].stats.get("mean_best")])
    if facts:
        lines += ["## Scores", ""] + table(["", "value"], facts)
    if "scores" in ms and (figure := score_plot(round_dir / "scores", round_dir / "report_scores.png",
                                                     "judge scores of this round's responses")):
        lines += [f"![judge scores]({figure})", ""]
    if "seed_sft" in ms:
        s = ms["seed_sft"].stats
        lines += ["## Seed SFT set (D_1)", ""] + table(["origin", "rows"], [[k, v] for k, v in s["origins"].items()])
        lines += [f"Left out: {s['dropped_heldout']} held-out prompts, {s['dropped_duplicates']} duplicates, "
                  f"{s['skipped_bad_lines']} bad lines.", ""]
    if "pairs" in ms:
        s = ms["pairs"].stats
        lines += ["## DPO pairs", "", f"{ms['pairs'].rows} pairs (best vs {s['rejected_by']}): mean chosen score "
                  f"{s['mean_chosen']:.3f}, rejected {s['mean_rejected']:.3f}; {s['prompts_without_pair']} prompts "
                  "without two valid responses.", ""]
    if "eval_summary" in ms:
        rows = ms["eval_summary"].stats["table"]
        lines += ["## Evaluation: held-out prompts", ""]
        lines += table(["judge", "prompts", "mean score", "unscored", "win rate vs previous", "win rate vs M1a",
                        "mean tokens"],
                       [[r["judge"], r["prompts"], r["mean_score"], r.get("unscored"), r["win_rate_vs_previous"],
                         r["win_rate_vs_m1a"], r["mean_tokens"]] for r in rows])
    metrics_file = round_dir / "sft" / "train_metrics.json"
    if metrics_file.is_file():
        losses = json.loads(metrics_file.read_text()).get("losses") or []
        if losses:
            plot = line_plot(round_dir / "report_sft_loss.png", "SFT loss", losses, "loss")
            lines += ["## SFT", "", f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}.", "",
                      f"![sft loss]({plot})", ""]
    return lines


def write_round(round_dir: Path) -> Path:
    """``round_dir/report.md`` and its plots."""
    return write_report(round_dir, [pool_sections, round_sections])


def write_all(run_dir: Path) -> list[Path]:
    """Every round's report of a run directory, and its table of rounds."""
    return [*(write_round(d) for d in sorted(Path(run_dir).glob("round_[0-9][0-9][0-9]"))), write_rounds(run_dir)]


def rounds_table(run_dir: Path) -> list[list[Any]]:
    """One row per (round, evaluation judge): prompts, responses, mean best-of-N score, the correlation of the
    run judge's scores with response length, the held-out evaluation's mean score and unscored (empty or flagged)
    answers, win rates vs the previous round and vs M1a, mean answer tokens."""
    out = []
    for d in sorted(Path(run_dir).glob("round_[0-9][0-9][0-9]")):
        ms = manifests(d)
        best = ms["selected"].stats.get("mean_best") if "selected" in ms else (
            ms["pairs"].stats.get("mean_chosen") if "pairs" in ms else None)
        corr = ms["scores"].stats.get("score_length_corr") if "scores" in ms else None
        head = [int(d.name[len("round_"):]), ms["prompts"].rows if "prompts" in ms else 0,
                ms["responses"].rows if "responses" in ms else 0, best, corr]
        for r in (ms["eval_summary"].stats["table"] if "eval_summary" in ms else [{}]):
            out.append([*head, r.get("judge"), r.get("mean_score"), r.get("unscored"), r.get("win_rate_vs_previous"),
                        r.get("win_rate_vs_m1a"), r.get("mean_tokens")])
    return out


ROUNDS_HEADER = ["round", "prompts", "responses", "mean best-of-N", "score~length r", "eval judge", "eval mean score",
                 "unscored answers", "win rate vs previous", "win rate vs M1a", "mean tokens"]


def write_rounds(run_dir: Path) -> Path:
    """``run_dir/rounds.md``: the table of rounds (``rounds_table``)."""
    path = Path(run_dir) / "rounds.md"
    lines = [f"# {Path(run_dir).name}: rounds", "", *table(ROUNDS_HEADER, rounds_table(run_dir)), ""]
    atomic_write_text(path, "\n".join(lines))
    return path
