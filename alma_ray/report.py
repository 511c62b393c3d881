"""Per-round reports: ``round_NNN/report.md`` with its plots, rebuilt from the round's manifests.

This module is the machinery every recipe's report uses: the committed manifests of a round, small plots written
atomically, markdown tables, and ``write_report`` (a stage table, then the recipe's sections). Each recipe says
what its sections show (``alma_ray.recipes.alma.report``). Reports read only what stages committed, so they can be
rebuilt at any time (``alma-ray report <run_dir>``) and never hold up a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alma_ray.store import MANIFEST, Manifest, atomic_path, atomic_write_text, read_manifest

Section = Callable[[Path, dict[str, Manifest]], list[str]]
"""A report section: (round directory, its manifests by stage) -> markdown lines (none when it has nothing)."""


def manifests(round_dir: Path) -> dict[str, Manifest]:
    found = {}
    for file in sorted(round_dir.glob(f"*/{MANIFEST}")):
        m = read_manifest(file.parent)  # an unreadable one raises StageDamagedError, naming it
        if m is not None:
            found[m.stage] = m
    return dict(sorted(found.items(), key=lambda item: item[1].started_at))  # in the order they ran


def plot(path: Path, title: str, ylabel: str, draw: Callable[[Any], None]) -> str:
    """Draw one small figure with ``draw(axes)``, write it atomically to ``path``; returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    try:
        draw(ax)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight")
        return path.name
    finally:
        plt.close(fig)


def bar_plot(path: Path, title: str, labels: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    import numpy as np

    def draw(ax: Any) -> None:
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar(np.arange(len(labels)) + i * width, values, width, label=name)
        ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2, labels, rotation=15)
        if len(series) > 1:  # under the axis: the bars may all reach the top
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(series), frameon=False)

    return plot(path, title, ylabel, draw)


def line_plot(path: Path, title: str, values: list[float], ylabel: str) -> str:
    def draw(ax: Any) -> None:
        ax.plot(range(1, len(values) + 1), values)
        ax.set_xlabel("step")

    return plot(path, title, ylabel, draw)


def score_plot(stage_dir: Path, path: Path, title: str) -> str | None:
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

    return plot(path, title, "share", draw)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows], ""]


def write_report(round_dir: Path, sections: Sequence[Section]) -> Path:
    """Write ``round_dir/report.md`` (and its plots) from the committed stages; returns its path."""
    ms = manifests(round_dir)
    lines = [f"# {round_dir.parent.name}: {round_dir.name}", ""]
    lines += table(["stage", "rows", "wall s"], [[m.stage, m.rows, m.wall_s] for m in ms.values()])
    for section in sections:
        lines += section(round_dir, ms)
    path = round_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
