"""One rank's loop outside Ray (as ``make bench-train``'s bare arm runs it): DeepSpeed, gloo, the tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from alma_ray.config import TrainConfig
from alma_ray.train.data import windows
from alma_ray.train.loop import Worker, loop_config
from alma_ray.train.objectives import SFT
from tests.conftest import _free_port


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process group of one, in this process, left as it was found."""
    import torch.distributed as dist

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.engine
@pytest.mark.usefixtures("one_rank")
def test_the_last_partial_accumulation_steps_the_optimizer(tiny_model: str) -> None:
    """10 rows, micro-batch 2, 2 epochs: 10 micro-steps. With grad_accum 4 the optimizer steps after micro-steps 4
    and 8, and after the 10th, the last (a partial accumulation, otherwise lost)."""
    train = TrainConfig(micro_batch=2, grad_accum=4, epochs=2, max_seq_len=64, lr=1e-3, zero_stage=2,
                        bucket_window=1)
    worker = Worker.start(loop_config(train, objective=SFT(), model=tiny_model, seed=0, use_gpu=False))
    rows = {"prompt": np.array([f"name a colour, {i}" for i in range(10)]),
            "response": np.array(["blue", "red", "green", "white", "black"] * 2)}
    schedule = list(worker.schedule(lambda epoch: windows(rows, 4)))
    assert [(epoch, last) for epoch, _, last in schedule] == [(0, False)] * 5 + [(1, False)] * 4 + [(1, True)]
    weights = {name: p.detach().clone() for name, p in worker.engine.module.named_parameters()}
    stepped = []
    for _, batch, last in schedule:
        worker.step += 1
        worker.run_step(batch, last=last)
        stepped.append(worker.engine.global_steps)
    assert stepped == [0, 0, 0, 1, 1, 1, 1, 2, 2, 3]
    summary = worker.summary()
    assert summary["steps"] == 10 and summary["optimizer_steps"] == 3
    moved = [name for name, p in worker.engine.module.named_parameters() if not p.detach().equal(weights[name])]
    assert moved  # the steps changed the weights
