"""ALMA's report sections. Round 0 shows how the prompt pool was made (filter yields, dedup, cluster sizes, pool
diversity) and the judge's held-out accuracy table; a training round shows its draw (cluster draw vs a random draw
of as many unused prompts), scores, selection and the SFT loss curve."""

from __future__ import annotations

import json
from pathlib import Path

from alma_ray.judge.annotations import accuracy_table
from alma_ray.report import bar_plot, line_plot, score_plot, table, write_report
from alma_ray.store import Manifest


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
    if "judge_eval" in ms:
        lines += ["## Judge: held-out pairwise accuracy", "", accuracy_table(ms["judge_eval"].stats["table"]), ""]
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
    if "selected" in ms:
        facts.append(["mean score, best of N", ms["selected"].stats.get("mean_best")])
    if facts:
        lines += ["## Scores", ""] + table(["", "value"], facts)
    if "scores" in ms and (figure := score_plot(round_dir / "scores", round_dir / "report_scores.png",
                                                     "judge scores of this round's responses")):
        lines += [f"![judge scores]({figure})", ""]
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
    """Every round's report of a run directory."""
    return [write_round(d) for d in sorted(Path(run_dir).glob("round_[0-9][0-9][0-9]"))]
