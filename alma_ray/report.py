"""The per-round report: ``round_NNN/report.md`` with its plots, rebuilt from the round's manifests.

Round 0 shows how the prompt pool was made (filter yields, dedup, cluster sizes, pool diversity) and the judge's
held-out accuracy table; a training round shows its draw (cluster draw vs a random draw of as many unused
prompts), scores, selection and the SFT loss curve. Reports read only what stages committed, so they can be
rebuilt at any time (``alma-ray report <run_dir>``) and never hold up a stage.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alma_ray.store import MANIFEST, Manifest


def _manifests(round_dir: Path) -> dict[str, Manifest]:
    found = {}
    for file in sorted(round_dir.glob(f"*/{MANIFEST}")):
        m = Manifest(**json.loads(file.read_text()))
        found[m.stage] = m
    return dict(sorted(found.items(), key=lambda item: item[1].started_at))  # in the order they ran


def _plot(path: Path, title: str, ylabel: str, draw: Callable[[Any], None]) -> str:
    """Draw one small figure with ``draw(axes)``, write it atomically to ``path``; returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    try:
        draw(ax)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png")
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        tmp.replace(path)
        return path.name
    finally:
        plt.close(fig)


def _bar_plot(path: Path, title: str, labels: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    import numpy as np

    def draw(ax: Any) -> None:
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar(np.arange(len(labels)) + i * width, values, width, label=name)
        ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2, labels, rotation=15)
        if len(series) > 1:  # under the axis: the bars may all reach the top
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(series), frameon=False)

    return _plot(path, title, ylabel, draw)


def _line_plot(path: Path, title: str, values: list[float], ylabel: str) -> str:
    def draw(ax: Any) -> None:
        ax.plot(range(1, len(values) + 1), values)
        ax.set_xlabel("step")

    return _plot(path, title, ylabel, draw)


def _score_plot(stage_dir: Path, path: Path, title: str) -> str | None:
    """The judge's mean 11-way distribution over the unflagged rows of a scores stage, beside the share of rows
    whose real-valued score rounds to each rating; read batch by batch, so a round of any size fits."""
    import numpy as np
    import pyarrow.parquet as pq

    mass, rounded, rows = np.zeros(11), np.zeros(11), 0
    for file in sorted(stage_dir.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(columns=["score", "score_dist", "judge_flag"]):
            df = batch.to_pandas()
            df = df[df.judge_flag == ""]
            if len(df):
                mass += np.stack(df.score_dist.to_list()).sum(0)
                rounded += np.bincount(np.clip(np.rint(df.score.to_numpy()), 0, 10).astype(int), minlength=11)
                rows += len(df)
    if not rows:
        return None

    def draw(ax: Any) -> None:
        ax.bar(np.arange(11) - 0.2, mass / rows, 0.4, label="mean p(rating)")
        ax.bar(np.arange(11) + 0.2, rounded / rows, 0.4, label="real-valued score, rounded")
        ax.set_xticks(np.arange(11))
        ax.set_xlabel(f"rating ({rows} scored rows)")
        ax.legend()

    return _plot(path, title, "share", draw)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows], ""]


def _pool_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "synthesis" in ms:
        filters = ms["synthesis"].stats["filters"]
        total = sum(filters.values())
        lines += ["## Prompt synthesis: filter yields", ""]
        lines += _table(["filter", "rows", "share"],
                        [[k, v, v / total if total else 0.0] for k, v in filters.items()])
    if "pool" in ms:
        s = ms["pool"].stats
        lines += ["## Dedup", ""]
        lines += _table(["passed filters", "exact duplicates", "near duplicates", "near duplicates of seeds",
                         "unique prompts"],
                        [[s["passed_filters"], s["duplicate_exact"], s["near_duplicate"],
                          s["near_duplicate_of_seed"], ms["pool"].rows]])
    if "clusters" in ms:
        s = ms["clusters"].stats
        hist = s["size_histogram"]  # the manifest's keys come back sorted as text: order the bins by size
        hist = {b: hist[b] for b in sorted(hist, key=lambda b: int(b.split("-")[0]))}
        plot = _bar_plot(round_dir / "report_cluster_sizes.png", f"cluster sizes (K={s['clusters']})",
                         list(hist), {"clusters": list(hist.values())}, "clusters")
        lines += ["## Clusters", "", f"K = {s['clusters']}, non-empty {s['nonempty_clusters']}, largest "
                  f"{s['largest_cluster']} prompts; k-means trained in {s['kmeans_train_s']} s.", "",
                  f"![cluster sizes]({plot})", "", "Pool diversity (sample):", ""]
        d = s["diversity"]
        lines += _table(list(d), [list(d.values())])
    if "judge_eval" in ms:
        from alma_ray.recipes.judge import accuracy_table

        lines += ["## Judge: held-out pairwise accuracy", "", accuracy_table(ms["judge_eval"].stats["table"]), ""]
    if "distill_scores" in ms and (score_plot := _score_plot(
            round_dir / "distill_scores", round_dir / "report_judge_scores.png", "fine-tuned judge, distill pairs")):
        lines += ["Self-distillation targets: the fine-tuned judge's scores of the distill pairs.", "",
                  f"![judge scores]({score_plot})", ""]
    return lines


def _round_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "prompts" in ms and "diversity" in ms["prompts"].stats:  # runs older than the pool have no draw metrics
        s = ms["prompts"].stats
        draws = s["diversity"]
        keys = [k for k in draws["cluster_draw"] if k != "prompts"]
        lines += ["## Prompts: cluster draw vs random draw", "",
                  f"{ms['prompts'].rows} prompts from as many clusters; {s['ledger_before']} prompts used by earlier "
                  f"rounds, {s['unused_prompts']} unused in {s['clusters_available']} clusters before this draw.", ""]
        lines += _table(["metric", "cluster draw", "random draw"],
                        [[k, draws["cluster_draw"][k], draws["random_draw"][k]] for k in keys])
        plot = _bar_plot(round_dir / "report_diversity.png", "prompt diversity (sample)", keys,
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
        lines += ["## Scores", ""] + _table(["", "value"], facts)
    if "scores" in ms and (score_plot := _score_plot(round_dir / "scores", round_dir / "report_scores.png",
                                                     "judge scores of this round's responses")):
        lines += [f"![judge scores]({score_plot})", ""]
    metrics_file = round_dir / "sft" / "train_metrics.json"
    if metrics_file.is_file():
        losses = json.loads(metrics_file.read_text()).get("losses") or []
        if losses:
            plot = _line_plot(round_dir / "report_sft_loss.png", "SFT loss", losses, "loss")
            lines += ["## SFT", "", f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}.", "",
                      f"![sft loss]({plot})", ""]
    return lines


def write_report(round_dir: Path) -> Path:
    """Write ``round_dir/report.md`` (and its plots) from the committed stages; returns its path."""
    ms = _manifests(round_dir)
    lines = [f"# {round_dir.parent.name}: {round_dir.name}", ""]
    lines += _table(["stage", "rows", "wall s"], [[m.stage, m.rows, m.wall_s] for m in ms.values()])
    lines += _pool_sections(round_dir, ms) + _round_sections(round_dir, ms)
    path = round_dir / "report.md"
    tmp = path.with_name(f".report.md.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
