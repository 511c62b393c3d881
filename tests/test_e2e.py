"""ALMA end to end as a user runs it, on the tiny model: the alma-tiny preset submitted with `ray job submit` to the
session's `ray start --head` (token authentication on, loopback) for 2 rounds, then extended to its 3 by the CLI
(``tests/conftest.py``: the run the recipe's tests read too), with real Ray Data, vLLM, Serve, Ray Train + DeepSpeed;
a model damaged and repaired, rebuilding what was built on it in later rounds and nothing else, then a rerun that
skips every stage; and the DPO variant's run whose driver is SIGKILLed at several points, resumed by
the same command, against the uninterrupted one; a second run of the same directory refused meanwhile."""

from __future__ import annotations

import json
import shutil
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

from tests.conftest import ALMA_TINY, DPO_VARIANT, PublishedRun, alma_cli, run_summary

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _run(out: Path, address: str, *overrides: str) -> tuple[dict, str]:
    proc = alma_cli(out, address, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_summary(proc.stdout), proc.stdout


def _done_stages(run_dir: Path, rounds: range) -> set[str]:
    return {f"{m.parent.parent.name}/{m.parent.name}" for r in rounds
            for m in (run_dir / f"round_{r:03d}").glob("*/_MANIFEST.json")}


def test_every_stage_writes_rows_with_lineage(alma_tiny_run: PublishedRun) -> None:
    run_dir, rows = alma_tiny_run.run_dir, alma_tiny_run.first["rows"]
    assert alma_tiny_run.first["skipped"] == []
    assert rows["synthesis"] == 24 and 12 <= rows["pool"] <= 24
    assert rows["embeddings"] == rows["clusters"] == rows["pool"]
    assert {k: rows[k] for k in ("prompts", "responses", "scores", "selected", "seed_sft", "sft_seed1")} == {
        "prompts": 4, "responses": 12, "scores": 12, "selected": 4, "seed_sft": 12, "sft_seed1": 12}
    assert rows["sft"] == 12 + 16 and rows["probe"] == rows["eval"] == 8 * 3  # rounds 0 (the base), 1 and 2
    assert rows["probe_ifbench"] == rows["eval_ifbench"] == 4 * 3
    r2 = run_dir / "round_002"
    responses = pq.read_table(r2 / "responses").to_pandas()
    assert not responses.duplicated(["prompt_id", "checkpoint", "sample_index"]).any()
    for column in ["round", "prompt_id", "cluster_id", "checkpoint", "seed", "sample_index", "response"]:
        assert responses[column].notna().all(), column
    scores = pq.read_table(r2 / "scores").to_pandas()
    assert {"judge", "judge_version", "score", "score_dist"} <= set(scores.columns)
    valid = scores[scores.judge_flag == ""]
    assert ((valid.score >= 0) & (valid.score <= 10)).all()
    selected = pq.read_table(r2 / "selected").to_pandas()
    best = valid.groupby("prompt_id").score.max()
    assert (selected.set_index("prompt_id").score == best.loc[selected.prompt_id].values).all()


def test_new_checkpoint_loads_in_vllm(alma_tiny_run: PublishedRun) -> None:
    sft = alma_tiny_run.run_dir / "round_002" / "sft"
    assert (sft / "model.safetensors").exists() and (sft / "tokenizer.json").exists()
    metrics = json.loads((sft / "train_metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["losses"][-1] < metrics["losses"][0]
    probe = pq.read_table(alma_tiny_run.run_dir / "round_002" / "probe").to_pandas()
    assert (probe.checkpoint == "round_002/sft").all() and (probe.output_tokens > 0).all()


def test_the_run_extends_by_a_round_leaving_the_earlier_ones_untouched(alma_tiny_run: PublishedRun) -> None:
    """rounds=3 on the finished 2-round run runs round 3 only; no prompt is drawn twice."""
    run_dir, extended = alma_tiny_run.run_dir, alma_tiny_run.extended
    assert set(extended["skipped"]) == _done_stages(run_dir, range(3))
    assert {"prompts", "responses", "scores", "selected", "sft", "probe", "eval"} <= set(extended["wall_s"])
    assert not {"synthesis", "pool", "judge_gate", "seed_sft", "sft_seed1"} & set(extended["wall_s"])
    drawn = [pq.read_table(run_dir / f"round_00{r}/prompts").to_pandas().prompt_id for r in (2, 3)]
    assert not set(drawn[0]) & set(drawn[1])


def _manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {f"{m.parent.parent.name}/{m.parent.name}": json.loads(m.read_text())
            for m in run_dir.glob("round_*/*/_MANIFEST.json")}


def test_a_rebuilt_model_makes_what_was_built_on_it_stale_across_rounds(
        alma_tiny_run: PublishedRun, ray_address: str, tmp_path: Path) -> None:
    """Round 2's model damaged, the same command with --repair: round 2's training is rebuilt, and every stage
    whose declared inputs (stages of any round, models by content) changed with it, nothing else; then the same
    command again skips every stage."""
    run_dir = tmp_path / alma_tiny_run.run_dir.name
    shutil.copytree(alma_tiny_run.run_dir, run_dir, ignore=shutil.ignore_patterns("ray_train", ".lock"))
    before = _manifests(run_dir)
    # round 3 trained on D_1..D_3 (its seed SFT rows and both rounds' best-of-N), each an input by its round
    assert {"round_001/seed_sft", "round_002/selected", "round_003/selected"} <= set(
        before["round_003/sft"]["input_hashes"])
    assert "model:round_002/sft" in before["round_003/responses"]["input_hashes"]  # the mix samples M_2
    weights = run_dir / "round_002" / "sft" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64] ^= 0xFF
    weights.write_bytes(bytes(data))
    summary, stdout = _run(tmp_path, ray_address, "--repair")
    after = _manifests(run_dir)
    assert set(after) == set(before)
    rebuilt = set(before) - set(summary["skipped"])
    changed = {s for s in before if before[s]["input_hashes"] != after[s]["input_hashes"]}
    assert rebuilt == {"round_002/sft"} | changed, (rebuilt, changed)
    assert after["round_002/sft"]["content_hash"] != before["round_002/sft"]["content_hash"]
    assert {"round_002/probe", "round_003/responses"} <= rebuilt  # they load M_2; what is built on their rows is
    # rebuilt when those rows changed (above), and skipped when M_2's one changed weight left them as they were
    earlier = {s for s in before if s < "round_002"} | {f"round_002/{s}" for s in
                                                        ("prompts", "responses", "scores", "selected")}
    assert not rebuilt & earlier  # rounds 0-1 and the data round 2 trained on
    # unchanged again: every stage is skipped as done, nothing is rebuilt
    again, stdout = _run(tmp_path, ray_address)
    assert set(again["skipped"]) == set(before) == _done_stages(run_dir, range(4)) and again["wall_s"] == {}
    assert again["rows"] == alma_tiny_run.extended["rows"] and "skipped (done)" in stdout


def test_the_prompt_pool_is_filtered_deduplicated_embedded_and_clustered(alma_tiny_run: PublishedRun) -> None:
    run_dir = alma_tiny_run.run_dir
    r0 = run_dir / "round_000"
    synthesis = json.loads((r0 / "synthesis" / "_MANIFEST.json").read_text())["stats"]
    assert sum(synthesis["filters"].values()) == 24  # every request is counted once: passed or one filter
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
    assert set(clusters.prompt_id) == set(pool.prompt_id) and clusters.cluster_id.between(0, 7).all()
    prompts = pq.read_table(run_dir / "round_002" / "prompts").to_pandas()
    assert prompts.cluster_id.is_unique and set(prompts.prompt_id) <= set(pool.prompt_id)
    report = (run_dir / "round_002" / "report.md").read_text()
    assert "cluster draw" in report and (run_dir / "round_002" / "report_diversity.png").is_file()
    assert "![judge scores](report_scores.png)" in report and (run_dir / "round_002" / "report_scores.png").is_file()
    assert "filter yields" in (r0 / "report.md").read_text()


@pytest.mark.usefixtures("ray_local")
def test_no_prompt_is_drawn_twice_across_rounds_even_across_a_crash(
        alma_tiny_run: PublishedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rounds 2-4 draw from a copy of the run's round 0 (its pool; round 1 is seed SFT, which draws nothing);
    round 3 crashes after writing its rows, before the commit."""
    from alma_ray.config import load_config
    from alma_ray.recipes.alma.pool import PromptPool, draw
    from alma_ray.recipes.base import Run, open_store
    from alma_ray.stages import draw as draw_stage
    from alma_ray.store import StageResult

    source = alma_tiny_run.run_dir
    run_dir = tmp_path / source.name
    shutil.copytree(source / "round_000", run_dir / "round_000")
    for name in ("config.yaml", "config.hash"):
        shutil.copy2(source / name, run_dir / name)
    config = load_config(ALMA_TINY, [f"output_dir={tmp_path}"])
    store = open_store(config)
    clusters, embeddings = store.done(0, "clusters"), store.done(0, "embeddings")
    assert clusters is not None and embeddings is not None
    pool = PromptPool(clusters, embeddings)

    def draw_round(r: int) -> StageResult:
        return draw(config, Run(store, log=lambda line: None), r, pool)

    assert not draw_round(2).skipped
    written_before_crash: list[str] = []
    real_counted = draw_stage.DrawPrompts.counted

    def crash(*args, **kwargs):  # called after the round's rows are on disk, before the commit
        for tmp in store.path(3, "prompts").parent.glob(".prompts.tmp-*"):
            written_before_crash.extend(pq.read_table(tmp).to_pandas().prompt_id)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(draw_stage.DrawPrompts, "counted", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        draw_round(3)
    monkeypatch.setattr(draw_stage.DrawPrompts, "counted", real_counted)
    assert written_before_crash and store.manifest(3, "prompts") is None
    round3 = draw_round(3)
    assert not round3.skipped and round3.manifest.stats["ledger_before"] == 4
    round4 = draw_round(4)
    assert draw_round(4).skipped  # committed: a rerun never draws again
    ids = {r: list(pq.read_table(store.path(r, "prompts")).to_pandas().prompt_id) for r in (2, 3, 4)}
    assert sorted(ids[3]) == sorted(written_before_crash)  # the resumed round drew what the crashed one had
    everything = ids[2] + ids[3] + ids[4]
    assert len(everything) == len(set(everything)) == 12, ids
    assert round4.manifest.stats["ledger_before"] == 8
    store.close()


def _rows(stage_dir: Path) -> pd.DataFrame:
    df = pq.read_table(stage_dir).to_pandas()
    keys = [c for c in ("round", "prompt_id", "request_index", "checkpoint", "sample_index") if c in df.columns]
    return pd.DataFrame(df.sort_values(keys).reset_index(drop=True))


def _kill_when(cmd: list[str], ready: Any) -> None:
    """Start the run; SIGKILL its driver as soon as ``ready()`` (a path test) holds (the test's time limit bounds
    the wait)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the point to kill it at"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _vectors(column: pd.Series) -> np.ndarray:
    """A column of vectors (or of judge -> score maps, read back as (key, value) lists) as one float array."""
    out = []
    for v in column:
        if hasattr(v, "to_numpy"):  # an element of Ray Data's tensor extension (embeddings)
            v = v.to_numpy()
        v = sorted(v.items()) if isinstance(v, dict) else list(v)
        out.append([x for _, x in sorted(v)] if v and isinstance(v[0], tuple) else v)
    return np.array(out, dtype=float)


NOISY = {"score", "score_mass", "mean_score", "chosen_score", "rejected_score", "cumulative_logprob"}
"""Float columns that another batch composition moves by rounding noise: compared with a tolerance."""
VECTORS = {"embedding", "score_dist", "member_scores"}


def test_a_driver_killed_mid_stage_resumes_to_the_uninterrupted_run(
        dpo_run: tuple[Path, dict], ray_address: str, tmp_path: Path) -> None:
    """SIGKILL the driver of the DPO variant's run mid-synthesis, mid-generation and mid-training (long stages
    commit parts: ``DPO_VARIANT``); the same command each time. The run ends equal to the uninterrupted one, row
    for row."""
    ref_dir, ref = dpo_run
    cmd = [sys.executable, "-m", "alma_ray.cli", "run", "--config", str(ALMA_TINY), "--address", ray_address,
           f"output_dir={tmp_path}", *DPO_VARIANT]
    run_dir = tmp_path / ref_dir.name
    r0, r2 = run_dir / "round_000", run_dir / "round_002"
    _kill_when(cmd, lambda: (r0 / ".synthesis.partial" / "_PART-00000.json").exists())
    _kill_when(cmd, lambda: (r2 / ".responses.partial" / "_PART-00000.json").exists())
    assert (r0 / "synthesis" / "_MANIFEST.json").exists() and not (r2 / "responses").exists()
    kept = sorted(p.name for p in (r2 / ".responses.partial").glob("p00000-*.parquet"))
    assert kept
    log = tmp_path / "third.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:  # while it runs: a second run of the same directory is refused, the first unharmed
        while not list(r2.glob(".dpo.tmp-*")):
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "is being run by another process" in second.stderr, second.stderr
    finally:
        proc.send_signal(signal.SIGKILL)  # ... then killed mid-training
        proc.wait()
    out = log.read_text()
    assert "resuming" in out and "round_002/responses" in out  # the responses resumed from their first part
    assert kept == sorted(p.name for p in (r2 / "responses").glob("p00000-*.parquet"))  # kept, not redone
    summary, stdout = _run(tmp_path, ray_address, *DPO_VARIANT)
    assert "left up by an earlier driver of this run" in stdout  # the killed driver's judge app, cleaned up
    assert summary["rows"] == ref["rows"]
    assert "round_002/responses" in summary["skipped"] and "round_002/dpo" not in summary["skipped"]
    rows_of = sorted(str(m.parent.relative_to(ref_dir)) for m in ref_dir.glob("round_*/*/_MANIFEST.json")
                     if any(m.parent.rglob("*.parquet")))  # every stage that writes rows, eval and seed SFT ones too
    assert {"round_000/eval", "round_001/seed_sft", "round_002/eval_summary", "round_002/pairs"} <= set(rows_of)
    for stage in rows_of:
        stage = f"{stage}/data" if (ref_dir / stage / "data").is_dir() else stage
        ours, theirs = _rows(run_dir / stage), _rows(ref_dir / stage)
        assert list(ours.columns) == list(theirs.columns), stage
        for column in ours.columns:
            a, b = ours[column], theirs[column]
            if column in NOISY:
                np.testing.assert_allclose(a.astype(float), b.astype(float), atol=1e-4, err_msg=f"{stage} {column}")
            elif column in VECTORS:  # per-row vectors (or per-judge maps): equal up to the same float noise
                np.testing.assert_allclose(_vectors(a), _vectors(b), atol=1e-4, err_msg=f"{stage} {column}")
            else:
                assert a.equals(b) or a.tolist() == b.tolist(), (stage, column)  # equals: NaN where NaN
    responses = _rows(r2 / "responses")
    assert not responses.duplicated(["prompt_id", "checkpoint", "sample_index"]).any()
    # DPO trained on the same pairs (equal above) for as many steps, after a kill mid-training
    metrics = [json.loads((d / "round_002/dpo/train_metrics.json").read_text()) for d in (run_dir, ref_dir)]
    assert metrics[0]["steps"] == metrics[1]["steps"] > 0
