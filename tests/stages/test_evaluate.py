"""The evaluation's figures against hand-worked examples: win rates with ties and unscored prompts, means, length."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from alma_ray.stages.evaluate import summarize, win_rate


def _scores(judge: str, scores: dict[str, float], tokens: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": p, "judge": judge, "score": s, "empty": False, "tokens": tokens,
                          "chars": 4 * tokens} for p, s in scores.items()])


def test_win_rate_counts_ties_as_half_and_leaves_unscored_prompts_out() -> None:
    ours = _scores("j", {"a": 7.0, "b": 5.0, "c": 3.0, "d": float("nan"), "e": 6.0})
    theirs = _scores("j", {"a": 6.0, "b": 5.0, "c": 4.0, "d": 2.0})  # e: not answered by the other model
    result = win_rate(ours, theirs)
    assert result == {"prompts": 3, "wins": 1, "ties": 1, "losses": 1, "win_rate": 0.5, "unscored": 1,
                      "by_default": 0}


def test_an_answer_beats_an_empty_one_and_two_empty_answers_are_left_out() -> None:
    ours = _scores("j", {"a": 3.0, "b": 5.0, "c": float("nan"), "d": float("nan")})
    theirs = _scores("j", {"a": float("nan"), "b": 6.0, "c": 4.0, "d": float("nan")})
    theirs.loc[theirs.prompt_id.isin(["a", "d"]), "empty"] = True  # a, d: the other model answered nothing
    ours.loc[ours.prompt_id == "d", "empty"] = True  # d: neither did ours
    result = win_rate(ours, theirs)  # c: ours flagged for another reason (not empty): left out
    assert result == {"prompts": 2, "wins": 1, "ties": 0, "losses": 1, "win_rate": 0.5, "unscored": 2,
                      "by_default": 1}
    ours.loc[ours.prompt_id == "c", "empty"] = True  # now c is an empty answer of ours against a scored one: a loss
    result = win_rate(ours, theirs)
    assert result["win_rate"] == pytest.approx(1 / 3)
    assert {k: v for k, v in result.items() if k != "win_rate"} == {"prompts": 3, "wins": 1, "ties": 0, "losses": 2,
                                                                     "unscored": 1, "by_default": 2}


def test_summary_per_judge_with_nothing_to_compare_in_round_one() -> None:
    this = pd.concat([_scores("run judge", {"a": 8.0, "b": 6.0}, tokens=20), _scores("other", {"a": 1.0, "b": 2.0})])
    previous = pd.concat([_scores("run judge", {"a": 7.0, "b": 7.0}), _scores("other", {"a": 1.0, "b": 1.0})])
    rows = {r["judge"]: r for r in summarize(this, previous, None)}
    assert rows["run judge"]["mean_score"] == 7.0 and rows["run judge"]["mean_tokens"] == 20.0
    assert rows["run judge"]["win_rate_vs_previous"] == 0.5 and rows["run judge"]["ties_vs_previous"] == 0
    assert rows["other"]["win_rate_vs_previous"] == 0.75 and rows["other"]["ties_vs_previous"] == 1
    assert rows["other"]["win_rate_vs_m1a"] is None and rows["other"]["mean_chars"] == 40.0
    assert rows["run judge"]["unscored"] == 0
    unscored = summarize(_scores("j", {"a": float("nan")}), None, None)[0]
    assert unscored["mean_score"] is None and unscored["win_rate_vs_previous"] is None and unscored["unscored"] == 1
    assert not math.isnan(unscored["mean_tokens"])


def test_a_rounds_evaluations_are_read_per_judge_the_sampled_answers_apart(tmp_path) -> None:
    """``Evals.scores``: the run judge's panel score of the probe and of the sampled answers under their own names,
    every member of the other panels (evaluation judges, IFBench checkers) by its name; empty answers counted."""
    from pathlib import Path

    from alma_ray.stages.evaluate import RUN_JUDGE, SAMPLED, Evals
    from alma_ray.store import Manifest, StageResult

    def stage(name: str, rows: list[dict]) -> StageResult:
        path = tmp_path / name
        path.mkdir()
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{"output_tokens": len(r["response"]), "member_scores": {}, **r} for r in rows])
        members = pa.array([list(r.get("member_scores", {}).items()) for r in rows], pa.map_(pa.string(), pa.float64()))
        pq.write_table(table.set_column(table.schema.get_field_index("member_scores"), "member_scores", members),
                       path / "part-0.parquet")
        return StageResult(Path(path), Manifest(stage=name, round=1, rows=len(rows), config_hash="", input_hashes={},
                                                 wall_s=0.0, started_at=0.0, stats={}), skipped=False)

    run = stage("eval", [{"prompt_id": "a", "response": "yes", "score": 6.0, "judge_flag": ""}])
    sampled = stage("eval_sampled", [{"prompt_id": "a", "response": r, "score": s, "judge_flag": f}
                                     for r, s, f in (("one", 2.0, ""), ("", math.nan, "empty_response"))])
    checked = stage("eval_ifbench", [{"prompt_id": "ifbench-1", "response": "x", "score": 5.0, "judge_flag": "",
                                      "member_scores": {"ifbench_strict": 0.0, "ifbench_loose": 10.0}}])
    frame = Evals(run, sampled=sampled, ifbench=checked).scores()
    rows = summarize(frame, None, None)
    by = {r["judge"]: r for r in rows}
    assert set(by) == {RUN_JUDGE, SAMPLED, "ifbench_strict", "ifbench_loose"}
    assert by[RUN_JUDGE]["mean_score"] == 6.0 and by[SAMPLED]["mean_score"] == 2.0
    assert by[SAMPLED]["prompts"] == 2 and by[SAMPLED]["empty"] == 1 and by[SAMPLED]["unscored"] == 1
    assert by["ifbench_strict"]["mean_score"] == 0.0 and by["ifbench_loose"]["mean_score"] == 10.0
    assert Evals(run, sampled=sampled, ifbench=checked).stages() == [run, sampled, checked]
