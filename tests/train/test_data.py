"""Length bucketing: every row once, the same number of micro-batches as without it, and less padding."""

from __future__ import annotations

import numpy as np

from alma_ray.train.data import as_columns, micro_batches, padding_fraction, windows


def _windows(lengths: list[int], size: int) -> list[dict[str, np.ndarray]]:
    columns = {**as_columns({"input_ids": [np.full(n, i) for i, n in enumerate(lengths)]}),
               "row": np.arange(len(lengths))}
    return list(windows(columns, size))


def test_bucketing_keeps_every_row_and_the_step_count() -> None:
    lengths = list(np.random.default_rng(1).integers(1, 200, size=101))
    plain = list(micro_batches(_windows(lengths, 4), micro_batch=4, rng=np.random.default_rng(0), bucket=False))
    bucketed = list(micro_batches(_windows(lengths, 4 * 8), micro_batch=4, rng=np.random.default_rng(0)))
    assert len(plain) == len(bucketed) == 26  # ceil(101 / 4): every rank takes the same number of steps
    assert sorted(np.concatenate([b["row"] for b in bucketed]).tolist()) == list(range(101))
    for b in bucketed:  # the columns stay aligned
        assert all(len(x) == lengths[r] for x, r in zip(b["input_ids"], b["row"]))
    # Same seed, same order: a restarted worker sees the same micro-batches.
    again = list(micro_batches(_windows(lengths, 4 * 8), micro_batch=4, rng=np.random.default_rng(0)))
    assert all((a["row"] == b["row"]).all() for a, b in zip(bucketed, again))


def test_bucketing_cuts_padding() -> None:
    lengths = np.random.default_rng(0).integers(10, 300, size=1000)
    assert padding_fraction(lengths, 8, window=16) < padding_fraction(lengths, 8, window=1) / 4
