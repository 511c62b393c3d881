"""The generation engine on the tiny model: real Ray Data, real vLLM actor pools, real actor deaths."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from alma_ray.config import AlmaConfig
from alma_ray.ids import stable_seed
from alma_ray.stages.generate import (
    TOO_LONG,
    generate_responses,
    generation_stats,
    mix,
    sampling_tally,
    split_samples,
)

LINEAGE = ["round", "prompt_id", "cluster_id", "checkpoint", "sample_index", "seed"]


def test_split_samples_by_weight() -> None:
    assert split_samples(200, [1, 1, 1]) == [67, 67, 66]
    assert split_samples(3, [2, 1]) == [2, 1]
    assert split_samples(4, [1]) == [4]
    assert sum(split_samples(7, [0.3, 0.3, 0.4])) == 7


def test_seeds_are_stable_and_distinct() -> None:
    assert stable_seed(0, 1, "a") == stable_seed(0, 1, "a") != stable_seed(0, 1, "b")
    assert 0 <= stable_seed("x") < 2**31


def test_per_checkpoint_sampling_overrides_the_section(tiny_model: str) -> None:
    config = _config(tiny_model, too_long="skip")
    a, b = config.generation.checkpoints
    assert config.generation.sampling(a)["max_tokens"] == 12
    assert config.generation.sampling(b)["max_tokens"] == 8 and config.generation.sampling(b)["temperature"] == 0


def _config(model: str, *, too_long: str, batch_size: int = 4, max_tokens: int = 12, engines: int = 1
            ) -> AlmaConfig:
    return AlmaConfig(
        base_model=model, judge={"model": model}, seed=7,
        generation={"n": 3, "max_tokens": max_tokens, "too_long": too_long, "checkpoints": [
            {"name": "a", "model": model, "weight": 2},
            {"name": "b", "model": model, "weight": 1, "max_tokens": 8, "temperature": 0.0}]},
        engine={"max_model_len": 128, "batch_size": batch_size, "dtype": "float32"},
        resources={"cpus_per_engine": 1, "engines_per_checkpoint": engines},
    )


def _prompts(count: int, long_every: int = 0) -> Any:
    import ray.data

    rows = []
    for i in range(count):
        text = f"Question {i}: describe a river in spring."
        if long_every and i % long_every == 0:
            text = " ".join(["a long rambling prompt about nothing"] * 60)  # far beyond 128 - 12 tokens
        rows.append({"round": 1, "prompt_id": f"p{i:03d}", "cluster_id": i % 5, "prompt": text})
    return ray.data.from_items(rows)


def _run(config: AlmaConfig, prompts: Any, out: Path, progress: Any = None, engines: Any = None) -> pd.DataFrame:
    """Sample the prompts through the engines given (a test's shared set) or a set of its own."""
    from alma_ray.engines.registry import Engines
    from alma_ray.stages.base import write_rows

    if engines is None:
        with Engines(config.engine, config.resources) as own:
            return _run(config, prompts, out, progress, own)
    gen = config.generation
    ds = generate_responses(prompts, mix(gen, {"a": config.base_model, "b": config.base_model}),
                            engines=engines, completion_template=gen.completion_template, too_long=gen.too_long,
                            seed_salt=f"{config.seed}:1:responses",
                            pool_size=config.resources.engines_per_checkpoint, progress=progress)
    rows, tallies = write_rows(ds, out, sampling_tally)
    df = pd.read_parquet(out)
    assert rows == len(df) and generation_stats(tallies)["output_tokens"] == df.output_tokens.sum()
    return df


def _assert_exactly_once(df: pd.DataFrame, prompts: int) -> None:
    assert len(df) == prompts * 3
    assert not df.duplicated(["prompt_id", "checkpoint", "sample_index"]).any()
    counts = df.groupby("checkpoint").size().to_dict()
    assert counts == {"a": 2 * prompts, "b": prompts}  # weights 2:1 of n=3
    assert sorted(df[df.checkpoint == "a"].sample_index.unique()) == [0, 1]
    assert df[LINEAGE].notna().all().all()


@pytest.mark.usefixtures("ray_local")
def test_two_checkpoints_rows_lineage_and_too_long_prompts(tiny_model: str, tmp_path: Path) -> None:
    """Both policies for prompts too long for the engine, through one set of engines (the pool of a model is kept
    for the next stage that samples it, as a run's stages share it)."""
    from alma_ray.engines.registry import Engines

    config = _config(tiny_model, too_long="skip")
    with Engines(config.engine, config.resources) as engines:
        df = _run(config, _prompts(12, long_every=5), tmp_path / "skip", engines=engines)
        truncated = _run(_config(tiny_model, too_long="truncate"), _prompts(12, long_every=5), tmp_path / "truncate",
                         engines=engines)
    _assert_exactly_once(df, 12)
    skipped = df[df.finish_reason == TOO_LONG]
    assert set(skipped.prompt_id) == {"p000", "p005", "p010"} and (skipped.response == "").all()
    assert (df[df.finish_reason != TOO_LONG].output_tokens > 0).all()
    assert df[df.checkpoint == "b"].output_tokens.max() <= 8  # the per-checkpoint max_tokens
    stats = generation_stats([sampling_tally(pq.read_table(tmp_path / "skip"))])
    assert stats["rows_too_long_skipped"] == 9 and stats["rows_prompt_truncated"] == 0
    assert stats["rows_per_checkpoint"] == {"a": 24, "b": 12}

    _assert_exactly_once(truncated, 12)
    assert not (truncated.finish_reason == TOO_LONG).any()
    cut = truncated[truncated.prompt_truncated]
    assert set(cut.prompt_id) == {"p000", "p005", "p010"}
    assert (cut[cut.checkpoint == "a"].prompt_tokens <= 128 - 12).all()
    assert (cut[cut.checkpoint == "b"].prompt_tokens <= 128 - 8).all()


@pytest.mark.usefixtures("ray_local")
def test_a_killed_engine_actor_loses_and_duplicates_nothing(tiny_model: str, tmp_path: Path) -> None:
    """SIGKILL one of a checkpoint's two engines mid-run: Ray restarts it and retries the batch it held; the output
    is exact. The engine killed is one this test started (never another test's on the shared cluster), once two of
    the stream's 40 batches are done."""
    import ray
    from ray.util.state import get_actor, list_actors

    from alma_ray.engines.registry import Engines
    from alma_ray.progress import StageProgress

    prompts = 40
    config = _config(tiny_model, too_long="skip", batch_size=2, max_tokens=48, engines=2)
    result: dict[str, Any] = {}

    with StageProgress("responses", prompts * 3, show=False) as progress, \
            Engines(config.engine, config.resources) as engines:
        victim = engines.samplers(tiny_model, 2)[0]  # the pool the stream uses (both checkpoints sample it)

        def work() -> None:
            try:
                result["df"] = _run(config, _prompts(prompts), tmp_path / "out", progress.counter, engines)
            except BaseException as e:  # noqa: BLE001 - reported below
                result["error"] = e

        runner = threading.Thread(target=work)
        runner.start()
        killed = None
        while runner.is_alive() and killed is None:  # the test's time limit (pytest-timeout) bounds the wait
            if ray.get(progress.counter.snapshot.remote())["batches"] >= 2:
                state = get_actor(victim._actor_id.hex())
                if state is not None and state.pid:
                    killed = state.pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        runner.join()
        (restarted,) = list_actors(filters=[("actor_id", "=", victim._actor_id.hex())], detail=True)  # before close
    assert "error" not in result, result.get("error")
    assert killed is not None, "the stream of 40 batches ended before its third"
    assert restarted.num_restarts >= 1 and restarted.pid != killed  # Ray restarted the engine it lost
    _assert_exactly_once(result["df"], prompts)
