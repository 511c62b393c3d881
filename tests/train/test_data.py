"""Length bucketing: every row once, the same number of micro-batches as without it, and less padding; padded
widths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alma_ray.train.data import (
    GPU_PAD_MULTIPLE,
    as_columns,
    batch_width,
    micro_batches,
    pad_batch,
    padding_fraction,
    windows,
)


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


def test_a_batch_is_padded_to_its_longest_row_and_on_a_gpu_to_a_multiple() -> None:
    batch = pad_batch([np.arange(1, 4), np.arange(1, 71)], [np.arange(1, 4), np.arange(1, 71)], pad_id=0)
    assert batch["input_ids"].shape == (2, 70) and batch["attention_mask"].sum() == 73
    assert (batch["labels"][0, 3:] == -100).all() and (batch["input_ids"][0, 3:] == 0).all()
    assert batch_width([3, 70]) == batch_width([3, 70], "cpu") == 70
    # a GPU's attention kernels meet a few widths, not one per step (the width is computed; no GPU needed here)
    assert batch_width([3, 70], "cuda") == batch_width([3, 70], "cuda:0") == 2 * GPU_PAD_MULTIPLE == 128
    assert batch_width([64], "cuda") == 64


def _stages(tmp_path: Path) -> list[str]:
    """Two committed stages' row directories (ALMA's D_1, D_2), rows p0..p11, two files each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for d, rows in (("d1", range(0, 5)), ("d2", range(5, 12))):  # ALMA's D_1, D_2: read in the order given
        (tmp_path / d).mkdir()
        for k, part in enumerate((list(rows)[:3], list(rows)[3:])):
            pq.write_table(pa.table({"prompt": [f"p{i}" for i in part], "response": [f"r{i}" for i in part],
                                     "extra": part}), tmp_path / d / f"part-{k}.parquet")
    return [str(tmp_path / "d1"), str(tmp_path / "d2")]


def test_small_examples_are_one_table_read_in_order_and_shared_equally(tmp_path: Path) -> None:
    import pyarrow as pa

    from alma_ray.train.data import read_examples, table_windows

    table = read_examples(_stages(tmp_path), ["prompt", "response"])
    assert isinstance(table, pa.Table) and table.column_names == ["prompt", "response"]
    assert table.column("prompt").to_pylist() == [f"p{i}" for i in range(12)]
    # 12 rows over 5 ranks: 2 each, the remainder (2 rows) dropped, as Ray Data's equal split does
    shares = [[p for w in table_windows(table, 4, rank=r, world=5) for p in w["prompt"]] for r in range(5)]
    assert [len(s) for s in shares] == [2] * 5 and sorted(sum(shares, [])) == sorted(f"p{i}" for i in range(10))
    assert [len(w["prompt"]) for w in table_windows(table, 5)] == [5, 5, 2]  # one rank: every row, in windows


@pytest.mark.usefixtures("ray_local")
def test_larger_examples_are_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data

    from alma_ray.train import data

    monkeypatch.setattr(data, "SMALL_EXAMPLES_BYTES", 0)
    rows = data.read_examples(_stages(tmp_path), ["prompt", "response"])
    assert isinstance(rows, ray.data.Dataset) and rows.columns() == ["prompt", "response"]
    assert sorted(r["prompt"] for r in rows.take_all()) == sorted(f"p{i}" for i in range(12))
    odd = data.read_examples([str(tmp_path / "d2")], ["prompt"], [("extra", ">", 8)])
    assert sorted(r["prompt"] for r in odd.take_all()) == ["p10", "p11", "p9"]  # type: ignore[union-attr]


def test_examples_filtered_on_the_small_path(tmp_path: Path) -> None:
    from alma_ray.train.data import read_examples

    table = read_examples(_stages(tmp_path), ["prompt"], [("extra", "<", 2)])
    assert table.column("prompt").to_pylist() == ["p0", "p1"]  # type: ignore[union-attr]


def test_keep_response_cuts_the_prompt_start_not_the_response(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    from alma_ray.train.data import IGNORE, encode_example

    tok = AutoTokenizer.from_pretrained(tiny_model)
    long_prompt, response = "a long dialogue " * 40, "the last turn."
    full, _ = encode_example(tok, long_prompt, response, max_seq_len=4096, completion_template="H: {prompt}\nA:",
                             eos=False, chat=False)
    ids, labels = encode_example(tok, long_prompt, response, max_seq_len=32, completion_template="H: {prompt}\nA:",
                                 eos=False, chat=False, keep_response=True)
    answer = [t for t in labels if t != IGNORE]
    assert len(ids) == 32 and ids[0] == full[0] and list(ids[-len(answer):]) == list(full[-len(answer):])
    assert tok.decode(answer).strip() == response  # the response whole, the prompt's start cut
    cut, _ = encode_example(tok, long_prompt, response, max_seq_len=32, completion_template="H: {prompt}\nA:",
                            eos=False, chat=False)
    assert list(cut) == list(full[:32])  # by default the end is cut, as before
