"""The report machinery: stages in the order they ran, a recipe's sections, plots written atomically."""

from __future__ import annotations

from pathlib import Path

from alma_ray.report import bar_plot, manifests, write_report
from alma_ray.store import Manifest


def _commit(round_dir: Path, stage: str, started: float, **stats: object) -> None:
    (round_dir / stage).mkdir(parents=True)
    m = Manifest(stage=stage, round=1, rows=3, config_hash="h", input_hashes={}, wall_s=1.5, started_at=started,
                 stats=dict(stats))
    (round_dir / stage / "_MANIFEST.json").write_text(m.to_json())


def test_report_lists_stages_in_run_order_and_appends_sections(tmp_path: Path) -> None:
    r1 = tmp_path / "run" / "round_001"
    _commit(r1, "scores", 20.0, mean_score=4.5)
    _commit(r1, "prompts", 10.0)
    (r1 / "half").mkdir()  # an uncommitted stage is not reported
    assert list(manifests(r1)) == ["prompts", "scores"]

    def section(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
        return [f"mean {ms['scores'].stats['mean_score']}"]

    text = write_report(r1, [section]).read_text()
    assert text.index("| prompts |") < text.index("| scores |") and "mean 4.5" in text
    assert not list(r1.glob(".*tmp*"))


def test_plots_are_written_whole(tmp_path: Path) -> None:
    name = bar_plot(tmp_path / "bars.png", "t", ["a", "b"], {"x": [1.0, 2.0]}, "y")
    assert name == "bars.png" and (tmp_path / "bars.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["bars.png"]


def test_bench_round_splits_each_stage_into_busy_and_fixed_time(tmp_path: Path) -> None:
    from alma_ray.bench.round import measure

    run = tmp_path / "run"
    for r, stage, started, wall, busy in [(0, "synthesis", 1.0, 10.0, 6.0), (1, "responses", 2.0, 4.0, 3.0),
                                          (1, "selected", 3.0, 1.0, None)]:
        (run / f"round_{r:03d}" / stage).mkdir(parents=True)
        m = Manifest(stage=stage, round=r, rows=1, config_hash="h", input_hashes={}, wall_s=wall, started_at=started,
                     stats={} if busy is None else {"busy_s": busy})
        (run / f"round_{r:03d}" / stage / "_MANIFEST.json").write_text(m.to_json())
    result = measure(run)
    assert list(result["stages"]) == ["r0/synthesis", "r1/responses", "r1/selected"]
    assert result["stages"]["r1/selected"] == {"wall_s": 1.0, "busy_s": 0.0, "fixed_s": 1.0}
    assert result["median_fixed_s"] == 1.0 and result["fixed_share"] == round(2.0 / 5.0, 3)
    assert result["round_wall_s"] == 5.0 and result["round0_wall_s"] == 10.0
