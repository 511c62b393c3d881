"""The tiny preset end to end through the CLI, as a user runs it: real Ray Data, vLLM, judge, Ray Train +
DeepSpeed; then a rerun that skips every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "alma_ray.cli", "run", "--config", str(REPO / "jobs/configs/tiny.yaml"),
           f"output_dir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs")
    summary, _ = _run(out)
    return out / "tiny", summary


def test_every_stage_writes_rows_with_lineage(tiny_run: tuple[Path, dict]) -> None:
    run_dir, summary = tiny_run
    assert summary["skipped"] == []
    assert summary["rows"] == {"prompts": 8, "responses": 24, "scores": 24, "selected": 8, "sft": 8, "probe": 2}
    r1 = run_dir / "round_001"
    responses = pq.read_table(r1 / "responses").to_pandas()
    # weights 2:1 over n=3 -> 2 samples from tiny-a, 1 from tiny-b, for every prompt
    assert responses.groupby("checkpoint").size().to_dict() == {"tiny-a": 16, "tiny-b": 8}
    assert not responses.duplicated(["prompt_id", "checkpoint", "sample_index"]).any()
    for column in ["round", "prompt_id", "cluster_id", "checkpoint", "seed", "sample_index", "response"]:
        assert responses[column].notna().all(), column
    scores = pq.read_table(r1 / "scores").to_pandas()
    assert {"judge", "judge_version", "score", "score_dist"} <= set(scores.columns)
    valid = scores[scores.judge_flag == ""]
    assert ((valid.score >= 0) & (valid.score <= 10)).all()
    selected = pq.read_table(r1 / "selected").to_pandas()
    best = valid.groupby("prompt_id").score.max()
    assert (selected.set_index("prompt_id").score == best.loc[selected.prompt_id].values).all()


def test_new_checkpoint_loads_in_vllm(tiny_run: tuple[Path, dict]) -> None:
    run_dir, _ = tiny_run
    sft = run_dir / "round_001" / "sft"
    assert (sft / "model.safetensors").exists() and (sft / "tokenizer.json").exists()
    metrics = json.loads((sft / "train_metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["losses"][-1] < metrics["losses"][0]
    probe = pq.read_table(run_dir / "round_001" / "probe").to_pandas()
    assert (probe.checkpoint == "round_001/sft").all() and (probe.output_tokens > 0).all()


def test_rerun_skips_every_stage(tiny_run: tuple[Path, dict]) -> None:
    run_dir, first = tiny_run
    summary, stdout = _run(run_dir.parent)
    assert summary["rows"] == first["rows"]
    assert len(summary["skipped"]) == 6 and summary["wall_s"] == {}
    assert "skipped (done)" in stdout
