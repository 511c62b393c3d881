"""ALMoST end to end on the tiny preset (``jobs/configs/almost-tiny.yaml``), run once through the CLI on the
session's cluster: every stage's output is checked against its inputs (mining filters, the grid, the rubric pairs
and the length filter, the reward model served by vLLM against transformers, self-play choosing the RM's best
candidate, demonstrations, SFT, evaluation), then a rerun finds every stage done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from alma_ray.config import load_config
from alma_ray.stages.compare import length_dropped
from tests.conftest import REPO, run_summary

PRESET = REPO / "jobs" / "configs" / "almost-tiny.yaml"
STAGES = {0: ["mined", "responses", "comparisons", "reward", "reward_check"],
          1: ["selfplay", "demonstrations", "sft", "probe", "probe_prompted", "eval", "eval_prompted", "eval_summary"]}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def _cli(out: Path, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alma_ray.cli", "run", "--config", str(PRESET), "--address", address,
                           f"output_dir={out}"], capture_output=True, text=True, timeout=1800, cwd=REPO)


@pytest.fixture(scope="module")
def almost_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, ray_address: str) -> tuple[Path, Any, str]:
    out = tmp_path_factory.mktemp("almost")
    proc = _cli(out, ray_address)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out / "almost-tiny", run_summary(proc.stdout), ray_address


def _rows(run: Path, r: int, stage: str) -> pd.DataFrame:
    return pq.read_table(run / f"round_{r:03d}" / stage).to_pandas()


def _manifest(run: Path, r: int, stage: str) -> dict[str, Any]:
    return dict(json.loads((run / f"round_{r:03d}" / stage / "_MANIFEST.json").read_text()))


def test_every_stage_runs_and_a_rerun_skips_them(almost_run: tuple[Path, Any, str], tmp_path: Path) -> None:
    run, summary, address = almost_run
    assert set(summary["rows"]) == {s for stages in STAGES.values() for s in stages} and not summary["skipped"]
    for r in STAGES:
        assert (run / f"round_{r:03d}" / "report.md").is_file()
    again = _cli(run.parent, address)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(run_summary(again.stdout)["skipped"]) == sum(len(s) for s in STAGES.values())


def test_mining_filters_and_lineage(almost_run: tuple[Path, Any, str]) -> None:
    run, _, _ = almost_run
    config = load_config(PRESET)
    mined, stats = _rows(run, 0, "mined"), _manifest(run, 0, "mined")["stats"]
    assert len(mined) == config.mining.num_requests == sum(stats["filters"].values())
    assert sorted(mined.request_index) == list(range(config.mining.num_requests))
    assert set(mined.wave) == {0, 1} and mined.source.str.startswith("mined:").all()
    accepted = mined[mined.reject == ""]
    assert stats["accepted"] == len(accepted) > 0 and accepted.prompt_id.is_unique
    assert (mined[mined.reject == "rouge"].rouge_max >= config.mining.rouge_threshold).all()
    assert stats["rouge_scored"] <= stats["rouge_all_pairs"]


def test_grid_responses_and_rubric_pairs(almost_run: tuple[Path, Any, str]) -> None:
    run, _, _ = almost_run
    config = load_config(PRESET)
    accepted = _rows(run, 0, "mined").query("reject == ''")
    responses = _rows(run, 0, "responses")
    assert len(responses) == len(accepted) * len(config.responses.grid)
    assert not responses.duplicated(["prompt_id", "config"]).any()
    assert set(responses.prompt_id) == set(accepted.prompt_id)
    assert responses.groupby("prompt_id").seed.nunique().eq(3).all()  # each configuration its own seed
    rules = _manifest(run, 0, "responses")["stats"]["rules"]
    assert sum(rules.values()) == len(responses) and rules["passed"] == (responses.bad == "").sum()

    pairs = _rows(run, 0, "comparisons")
    stats = _manifest(run, 0, "comparisons")["stats"]
    assert {"prompt", "chosen", "rejected", "chosen_config", "rejected_config", "chosen_rank", "rejected_rank"} <= \
        set(pairs.columns)
    assert (pairs.chosen_rank < pairs.rejected_rank).all()
    assert not pairs.duplicated(["prompt_id", "chosen_config"]).any()  # each configuration chosen once per prompt
    valid = responses[responses.bad == ""]
    for p in pairs.itertuples():
        lengths = valid[valid.prompt_id == p.prompt_id].chars.tolist()
        assert (p.length_filter == "dropped") == length_dropped(p.chosen_chars, p.rejected_chars, lengths)
    kept = pairs[pairs.length_filter == ""]
    assert stats["train_pairs"] == (kept.split == "train").sum() and stats["pairs"] == len(pairs)
    assert stats["prior_agrees_length"] == pytest.approx((kept.chosen_chars > kept.rejected_chars).mean())


def test_reward_model_trains_serves_and_checks(almost_run: tuple[Path, Any, str]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alma_ray.demonstrations import DIALOGUE_TEMPLATE
    from alma_ray.train.data import encode_example

    run, _, _ = almost_run
    rm = run / "round_000" / "reward"
    stats = _manifest(run, 0, "reward")["stats"]
    assert stats["objective"] == "reward" and stats["heldout_pair_accuracy"] is not None
    config = load_config(PRESET)
    model = AutoModelForSequenceClassification.from_pretrained(rm, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(rm)
    limit = min(config.reward.max_seq_len, config.engine.max_model_len)

    def encode(prompt: str, response: str) -> list[int]:  # as the Serve app encodes a row
        return list(encode_example(tok, prompt, response, max_seq_len=limit, completion_template=DIALOGUE_TEMPLATE,
                                   eos=False, chat=False, keep_response=True)[0])

    def reward(prompt: str, response: str) -> float:
        """Transformers on the saved RM folder, the score head at the last token (as training reads it:
        ``losses.last_token_values``). Not ``model(...).logits``: transformers reads the last token that is not
        the pad id, and the tiny tokenizer's pad is its unknown token, so a text cut after an unknown character
        would be read a token early."""
        with torch.no_grad():
            hidden = model.model(input_ids=torch.as_tensor(encode(prompt, response))[None]).last_hidden_state
            return float(model.score(hidden[:, -1])[0, 0].item())

    # the check: each side's reward is the RM's on that side (a swap of chosen and rejected fails here), and the
    # accuracy is the share of pairs it orders, recomputed from its rows
    check = _manifest(run, 0, "reward_check")["stats"]["accuracy"]["embedded:mt-bench-synthetic"]
    pairs = _rows(run, 0, "reward_check")
    assert check["pairs"] == len(pairs) == config.reward.check_max_pairs
    assert check["accuracy"] == pytest.approx((pairs.reward_chosen > pairs.reward_rejected).mean(), abs=1e-4)
    cut = [p for p in pairs.itertuples() if len(encode(p.prompt, p.rejected)) == limit]
    assert cut  # long pairs too: cut to the limit, their answer kept (``keep_response``)
    for p in [*pairs.head(3).itertuples(), *cut[:3]]:
        assert (p.reward_chosen, p.reward_rejected) == pytest.approx(
            (reward(p.prompt, p.chosen), reward(p.prompt, p.rejected)), abs=1e-3)
    # the RM the Serve app scored with (vLLM's pooling runner) gives transformers' value
    scored = _rows(run, 1, "eval").query("reward_flag == ''").iloc[0]
    assert scored.reward == pytest.approx(reward(scored.prompt, scored.response), abs=1e-3)


def test_selfplay_keeps_the_best_candidate_and_sft_learns_from_it(almost_run: tuple[Path, Any, str]) -> None:
    run, _, _ = almost_run
    config = load_config(PRESET)
    play = _rows(run, 1, "selfplay")
    assert len(play) == config.selfplay.prompts
    turns_total = 0
    for row in play.itertuples():
        dialogue, candidates = json.loads(row.dialogue), json.loads(row.candidates)
        assert dialogue[0] == {"role": "human", "text": row.prompt}
        assert [t["role"] for t in dialogue] == ["human", "assistant"] * (len(dialogue) // 2) + \
            ["human"] * (len(dialogue) % 2)
        for turn in candidates:
            assert len(turn["candidates"]) == config.selfplay.k
            usable = [c["reward"] for c in turn["candidates"] if c["text"] and "Human:" not in c["text"]
                      and "Assistant:" not in c["text"]]
            if turn["kept"] is not None:
                assert turn["candidates"][turn["kept"]]["reward"] == max(usable)
            else:
                assert not usable
        assert row.turns == sum(t["role"] == "assistant" for t in dialogue) <= config.selfplay.turns
        turns_total += row.turns
    demos = _rows(run, 1, "demonstrations")
    assert len(demos) == turns_total == _manifest(run, 1, "sft")["rows"]
    losses = json.loads((run / "round_001" / "sft" / "train_metrics.json").read_text())["losses"]
    assert len(losses) >= 2 and losses[-1] < losses[0]  # it learned from the demonstrations
    assert demos.source.str.startswith("rmsp:").all()
    probe = _rows(run, 1, "probe")
    assert set(probe.checkpoint) == {"base", "sft"}  # the SFT folder loaded in vLLM and answered
    summary = _manifest(run, 1, "eval_summary")["stats"]["table"]
    assert {r["checkpoint"] for r in summary} == {"base", "prompted", "sft"}
    assert all(r["sft_win_rate"] is not None for r in summary if r["checkpoint"] != "sft")
