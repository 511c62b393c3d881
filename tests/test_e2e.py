"""The tiny preset end to end as a user runs it: submitted with `ray job submit` to the session's `ray start
--head` (token authentication on, loopback), with real Ray Data, vLLM, judge, Ray Train + DeepSpeed; then a rerun
through the CLI that skips every stage; then a run whose driver is SIGKILLed at several points, resumed by the same
command, against the uninterrupted one; a second run of the same directory refused meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _cli(tmp_path: Path, address: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "alma_ray.cli", "run", "--config", str(REPO / "jobs/configs/tiny.yaml"),
            "--address", address, f"output_dir={tmp_path}", *overrides]


def _summary(stdout: str) -> dict:
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"run_dir"')))


def _run(tmp_path: Path, address: str, *overrides: str) -> tuple[dict, str]:
    proc = subprocess.run(_cli(tmp_path, address, *overrides), capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return _summary(proc.stdout), proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, ray_head: Any) -> tuple[Path, dict]:
    """The README's cluster path, as written: `ray job submit` to a local head with token authentication."""
    out = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(["ray", "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".", "--",
                           "python", "-m", "jobs.run", "--config", "jobs/configs/tiny.yaml", f"output_dir={out}"],
                          capture_output=True, text=True, timeout=1500, cwd=REPO, env={**os.environ, **ray_head.env})
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "tiny", _summary(proc.stdout)


def test_every_stage_writes_rows_with_lineage(tiny_run: tuple[Path, dict]) -> None:
    run_dir, summary = tiny_run
    assert summary["skipped"] == []
    rows = summary["rows"]
    assert rows["synthesis"] == 48 and 24 <= rows["pool"] <= 48
    assert rows["embeddings"] == rows["clusters"] == rows["pool"]
    assert {k: v for k, v in rows.items() if k not in ("synthesis", "pool", "embeddings", "clusters")} == {
        "prompts": 8, "responses": 24, "scores": 24, "selected": 8, "sft": 8,
        "probe": 4, "eval": 4, "eval_summary": 2}  # the base model (round 0) and round 1's model, on 2 prompts
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


def test_rerun_skips_every_stage(tiny_run: tuple[Path, dict], ray_address: str) -> None:
    run_dir, first = tiny_run
    summary, stdout = _run(run_dir.parent, ray_address)
    assert summary["rows"] == first["rows"]
    assert len(summary["skipped"]) == 15 and summary["wall_s"] == {}
    assert "skipped (done)" in stdout


def test_the_prompt_pool_is_filtered_deduplicated_embedded_and_clustered(tiny_run: tuple[Path, dict]) -> None:
    run_dir, _ = tiny_run
    r0 = run_dir / "round_000"
    synthesis = json.loads((r0 / "synthesis" / "_MANIFEST.json").read_text())["stats"]
    assert sum(synthesis["filters"].values()) == 48  # every request is counted once: passed or one filter
    pool = pq.read_table(r0 / "pool").to_pandas()
    stats = json.loads((r0 / "pool" / "_MANIFEST.json").read_text())["stats"]
    assert len(pool) == stats["passed_filters"] - stats["duplicate_exact"] - stats["near_duplicate"] - stats[
        "near_duplicate_of_seed"]
    assert pool.prompt_id.is_unique and (pool.prompt.str.len() >= 4).all()
    seeds = {json.loads(line)["prompt"] for line in (REPO / "alma_ray/data/tiny_seeds.jsonl").read_text().splitlines()}
    assert not set(pool.prompt) & seeds
    emb = pq.read_table(r0 / "embeddings").to_pandas()
    norms = np.linalg.norm(np.stack(emb.embedding.to_list()), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    clusters = pq.read_table(r0 / "clusters" / "data").to_pandas()
    assert set(clusters.prompt_id) == set(pool.prompt_id) and clusters.cluster_id.between(0, 11).all()
    prompts = pq.read_table(run_dir / "round_001" / "prompts").to_pandas()
    assert prompts.cluster_id.is_unique and set(prompts.prompt_id) <= set(pool.prompt_id)
    report = (run_dir / "round_001" / "report.md").read_text()
    assert "cluster draw" in report and (run_dir / "round_001" / "report_diversity.png").is_file()
    assert "![judge scores](report_scores.png)" in report and (run_dir / "round_001" / "report_scores.png").is_file()
    assert "filter yields" in (r0 / "report.md").read_text()


@pytest.mark.usefixtures("ray_local")
def test_no_prompt_is_drawn_twice_across_rounds_even_across_a_crash(
        tiny_run: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from alma_ray.store import StageResult

    """Rounds 2 and 3 draw from the tiny run's pool; round 2 crashes after writing its rows, before the commit."""

    from alma_ray.config import load_config
    from alma_ray.recipes.alma.pool import PromptPool, draw
    from alma_ray.recipes.base import Run, open_store
    from alma_ray.stages import draw as draw_stage

    run_dir, _ = tiny_run
    config = load_config(REPO / "jobs/configs/tiny.yaml", [f"output_dir={run_dir.parent}"])
    store = open_store(config)
    clusters, embeddings = store.done(0, "clusters"), store.done(0, "embeddings")
    assert clusters is not None and embeddings is not None
    pool = PromptPool(clusters, embeddings)

    def draw_round(r: int) -> StageResult:
        return draw(config, Run(store, log=lambda line: None), r, pool)

    written_before_crash: list[str] = []
    real_counted = draw_stage.DrawPrompts.counted

    def crash(*args, **kwargs):  # called after the round's rows are on disk, before the commit
        for tmp in store.path(2, "prompts").parent.glob(".prompts.tmp-*"):
            written_before_crash.extend(pq.read_table(tmp).to_pandas().prompt_id)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(draw_stage.DrawPrompts, "counted", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        draw_round(2)
    monkeypatch.setattr(draw_stage.DrawPrompts, "counted", real_counted)
    assert written_before_crash and store.manifest(2, "prompts") is None
    round2 = draw_round(2)
    assert not round2.skipped and round2.manifest.stats["ledger_before"] == 8
    round3 = draw_round(3)
    assert draw_round(3).skipped  # committed: a rerun never draws again
    ids = {r: list(pq.read_table(store.path(r, "prompts")).to_pandas().prompt_id) for r in (1, 2, 3)}
    assert sorted(ids[2]) == sorted(written_before_crash)  # the resumed round drew what the crashed one had
    everything = ids[1] + ids[2] + ids[3]
    assert len(everything) == len(set(everything)) == 24, ids
    assert round3.manifest.stats["ledger_before"] == 16
    store.close()


def _rows(stage_dir: Path) -> pd.DataFrame:
    df = pq.read_table(stage_dir).to_pandas()
    keys = [c for c in ("round", "prompt_id", "request_index", "checkpoint", "sample_index") if c in df.columns]
    return pd.DataFrame(df.sort_values(keys).reset_index(drop=True))


def _kill_when(cmd: list[str], ready: Any, timeout: float = 900) -> None:
    """Start the run; SIGKILL its driver as soon as ``ready()`` (a path test) holds."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the point to kill it at"
            assert time.time() < deadline, "the run never reached the point to kill it at"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_driver_killed_mid_stage_resumes_to_the_uninterrupted_run(
        tiny_run: tuple[Path, dict], ray_address: str, tmp_path: Path) -> None:
    """SIGKILL the driver mid-synthesis, mid-generation and mid-training (the preset commits parts of 6 rows); the
    same command each time. The run ends equal to the uninterrupted one, row for row."""
    ref_dir, ref = tiny_run
    cmd = _cli(tmp_path, ray_address)
    run_dir, r0, r1 = tmp_path / "tiny", tmp_path / "tiny" / "round_000", tmp_path / "tiny" / "round_001"
    _kill_when(cmd, lambda: (r0 / ".synthesis.partial" / "_PART-00001.json").exists())
    _kill_when(cmd, lambda: (r1 / ".responses.partial" / "_PART-00000.json").exists())
    assert (r0 / "synthesis" / "_MANIFEST.json").exists() and not (r1 / "responses").exists()
    kept = sorted(p.name for p in (r1 / ".responses.partial").glob("p00000-*.parquet"))
    assert kept
    log = tmp_path / "third.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:  # while it runs: a second run of the same directory is refused, the first unharmed
        while not list(r1.glob(".sft.tmp-*")):
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "is being run by another process" in second.stderr, second.stderr
    finally:
        proc.send_signal(signal.SIGKILL)  # ... then killed mid-training
        proc.wait()
    out = log.read_text()
    assert "resuming" in out and "round_001/responses" in out  # the responses resumed from their first part
    assert kept == sorted(p.name for p in (r1 / "responses").glob("p00000-*.parquet"))  # kept, not redone
    summary, stdout = _run(tmp_path, ray_address)
    assert "left up by an earlier driver of this run" in stdout  # the killed driver's judge app, cleaned up
    assert summary["rows"] == ref["rows"]
    assert "round_001/responses" in summary["skipped"] and "round_001/sft" not in summary["skipped"]
    for stage in ["round_000/synthesis", "round_000/pool", "round_000/embeddings", "round_000/clusters/data",
                  "round_001/prompts", "round_001/responses", "round_001/scores", "round_001/selected",
                  "round_000/probe", "round_001/probe"]:
        ours, theirs = _rows(run_dir / stage), _rows(ref_dir / stage)
        assert list(ours.columns) == list(theirs.columns), stage
        for column in ours.columns:
            a, b = ours[column], theirs[column]
            if column in ("score", "score_mass", "mean_score", "cumulative_logprob", "embedding", "score_dist",
                          "member_scores"):
                continue  # floats: checked below, up to the noise of another batch composition
            assert a.tolist() == b.tolist(), (stage, column)
    s_ours, s_ref = _rows(run_dir / "round_001/scores"), _rows(ref_dir / "round_001/scores")
    np.testing.assert_allclose(s_ours.score.astype(float), s_ref.score.astype(float), atol=1e-4)
    best = [_rows(d / "round_001/selected").mean_score.astype(float) for d in (run_dir, ref_dir)]
    np.testing.assert_allclose(best[0], best[1], atol=1e-6)
    responses = _rows(run_dir / "round_001/responses")
    assert not responses.duplicated(["prompt_id", "checkpoint", "sample_index"]).any()
    # SFT trained on the same rows (selected is equal above) for as many steps; the micro-batch order follows the
    # order Ray lists the selected stage's files in, which differs between runs, so the curves are not compared
    metrics = [json.loads((d / "round_001/sft/train_metrics.json").read_text()) for d in (run_dir, ref_dir)]
    assert metrics[0]["steps"] == metrics[1]["steps"] and metrics[0]["losses"][-1] < metrics[0]["losses"][0]
    # the run extends: rounds=2 runs round 2 only, rounds 0-1 untouched, no prompt drawn twice
    extended, _ = _run(tmp_path, ray_address, "rounds=2")
    assert all(s.startswith(("round_000/", "round_001/")) for s in extended["skipped"])
    assert len(extended["skipped"]) == 15 and (run_dir / "round_002" / "sft" / "_MANIFEST.json").exists()
    drawn = [_rows(run_dir / f"round_00{r}/prompts").prompt_id for r in (1, 2)]
    assert not set(drawn[0]) & set(drawn[1])
