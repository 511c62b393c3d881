"""The reward model and a killed worker through the real loop: Ray Train, 2 workers, DeepSpeed ZeRO, gloo, tiny
model. DPO's loop is checked on the DPO variant's run (``recipes/alma/test_published``: the first loss is log 2, then
it learns) and the judge's rating loss by the judge build (``recipes/alma/test_judge``: read back through vLLM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alma_ray.config import AlmaConfig
from alma_ray.train.loop import fit
from alma_ray.train.objectives import DPO, SFT, Reward


def _config(model: str, **train: object) -> AlmaConfig:
    return AlmaConfig.model_validate(dict(
        base_model=model, judge={"model": model}, generation={"checkpoints": [{"name": "a", "model": model}]},
        train={"micro_batch": 2, "max_seq_len": 64, "lr": 1e-3, "epochs": 3, "report_every": 2, **train},
        resources={"train_workers": 2}))


def _pairs() -> object:
    """16 preference pairs as a Ray Data dataset, streamed to the workers (the other way rows reach training, one
    small table, is the runs' way: ``alma_ray.train.data.Examples``)."""
    import ray.data

    topics = ["rain", "the sea", "bread", "a city", "winter", "a garden", "the moon", "a river"]
    rows = [{"prompt": f"tell me about {t}", "chosen": f"here is a careful answer about {t}", "rejected": "no"}
            for t in topics * 2]
    return ray.data.from_items(rows)


@pytest.mark.usefixtures("ray_local")
def test_reward_model_ranks_pairs(tiny_model: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "round_001" / "reward"
    # streamed training pairs, held-out pairs as a small table (every rank reads all of them)
    heldout = pa.Table.from_pylist([{"prompt": f"tell me about {t}", "chosen": f"here is a careful answer about {t}",
                                     "rejected": "no"} for t in ["snow", "a forest", "the wind", "a bridge"]])
    config = _config(tiny_model, zero_stage=3)
    metrics = fit(_pairs(), Reward(config.generation.completion_template), train=config.train,
                  resources=config.resources, model=tiny_model, out_dir=out, seed=0, heldout=heldout)
    assert metrics["losses"][-1] < metrics["losses"][0]
    # Held-out pairs, evaluated by every rank after training (ZeRO-3: the forward pass needs them all).
    assert metrics["heldout_batches"] == 2 and metrics["heldout_pair_accuracy"] == 1.0
    from alma_ray.train.data import encode_example

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        good, bad = (model(input_ids=torch.as_tensor(encode_example(
            tok, "tell me about snow", r, max_seq_len=64, completion_template="{prompt}", eos=False)[0])[None]
        ).logits.item() for r in ("here is a careful answer about snow", "no"))
    assert good > bad  # the saved head (ZeRO-3 gathered) ranks an unseen pair


@pytest.mark.usefixtures("ray_local")  # the Ray Data example joins the session's cluster, never one of its own
def test_missing_columns_are_named(tiny_model: str) -> None:
    import pyarrow as pa
    import ray.data

    from alma_ray.errors import StageInputError

    config = _config(tiny_model)
    rows = [{"prompt": "a", "response": "b"}]
    for examples in (ray.data.from_items(rows), pa.Table.from_pylist(rows)):
        with pytest.raises(StageInputError, match="missing \\['chosen', 'rejected'\\]"):
            fit(examples, DPO(), train=config.train, resources=config.resources, model=tiny_model,
                out_dir=Path("unused"), seed=0)


def _registered_state_checkpoint(storage: Path) -> bool:
    """True once Ray Train has registered a mid-training checkpoint (its files alone may still be uploading)."""
    import json

    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (ValueError, KeyError):
            continue
        if any("step" in r["metrics"] for r in results):
            return True
    return False


@pytest.mark.usefixtures("ray_local")
def test_a_killed_worker_resumes_from_the_checkpoint(tiny_model: str, tmp_path: Path) -> None:
    """SIGKILL a training worker after the first checkpoint: Ray Train restarts the group, which loads the
    DeepSpeed state and carries on; the run says where it resumed, and its loss curve is the uninterrupted run's,
    step for step (same rows, same order, same state)."""
    import os
    import signal
    import threading
    import time

    import pyarrow as pa
    from ray.util.state import list_actors

    out = tmp_path / "round_001" / "sft"
    # one table (rows rank::world, the same every run), so that the two runs see the same batches in the same
    # order: a streamed split may hand the ranks other rows from run to run
    examples = pa.Table.from_pylist([{"prompt": f"say {w}", "response": f"{w} {w} {w}"}
                                     for w in ["rain", "sea", "moon", "tree", "stone", "bird", "fire", "snow"] * 4])
    config = _config(tiny_model, epochs=2, checkpoint_every=4, max_failures=1)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["metrics"] = fit(examples, SFT(), train=config.train, resources=config.resources,
                                    model=tiny_model, out_dir=out, seed=0)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    runner = threading.Thread(target=work)
    runner.start()
    storage = tmp_path / "ray_train"
    killed = None
    while runner.is_alive() and killed is None:  # the test's time limit (pytest-timeout) bounds the wait
        if _registered_state_checkpoint(storage):
            workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                       if "RayTrainWorker" in a.class_name and a.pid]
            if workers:
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    runner.join()
    assert "error" not in result, result.get("error")
    assert killed is not None, "training ended before its first checkpoint was registered"
    metrics = result["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["resumed_from_step"] >= 4
    assert metrics["steps"] == 2 * 32 // (2 * 2)  # epochs x rows / (workers x micro_batch): none lost
    uninterrupted = fit(examples, SFT(), train=config.train, resources=config.resources, model=tiny_model,
                        out_dir=tmp_path / "uninterrupted" / "round_001" / "sft", seed=0)
    assert len(metrics["losses"]) == len(uninterrupted["losses"]) > 2
    np.testing.assert_allclose(metrics["losses"], uninterrupted["losses"], rtol=1e-4, atol=1e-5)
