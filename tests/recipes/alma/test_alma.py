"""Which model each generation checkpoint samples in a round (ALMA: M1a, M1b and the latest model, each from its
round), the mix checks, and the judge gate's verdict."""

from __future__ import annotations

import pytest

from alma_ray.config import AlmaConfig
from alma_ray.recipes.alma import Trained, round_model


def test_round_models_resolve_to_what_the_run_trained() -> None:
    assert round_model("latest", latest=None, round_one=[]) is None  # round 1: nothing trained yet
    assert round_model("latest", latest="r2/sft", round_one=["r1/sft", "r1/sft_seed1"]) == "r2/sft"
    assert round_model("round_one:1", latest="r2/sft", round_one=["r1/sft", "r1/sft_seed1"]) == "r1/sft_seed1"
    assert round_model("embedded:tiny-llama", latest="r2/sft", round_one=["r1/sft"]) is None  # a fixed model


def test_a_round_one_model_that_is_never_trained_is_refused() -> None:
    with pytest.raises(ValueError, match="round_one:0 .. round_one:1"):
        AlmaConfig.model_validate(dict(
            base_model="m", judge={"model": "m"}, train={"round_one_seeds": 2},
            generation={"checkpoints": [{"name": "a", "model": "m"}, {"name": "m1c", "model": "round_one:2"}]}))


def test_a_rounds_mix_holds_the_fixed_models_and_those_trained_so_far() -> None:
    config = AlmaConfig.model_validate(dict(
        base_model="m", judge={"model": "m"}, train={"round_one_seeds": 2},
        generation={"checkpoints": [{"name": "fixed", "model": "m"}, {"name": "m1b", "model": "round_one:1"},
                                    {"name": "new", "model": "latest"}]}))
    trained = Trained()
    assert trained.models(config, {"fixed": "/m"}, 1) == {"fixed": "/m"}  # round 1: nothing trained yet
    trained.latest, trained.round_one = "r2/sft", ["r1/sft", "r1/sft_seed1"]
    assert trained.models(config, {"fixed": "/m"}, 3) == {"fixed": "/m", "m1b": "r1/sft_seed1", "new": "r2/sft"}


ALMA_MIX = [{"name": "m1a", "model": "round_one:0"}, {"name": "m1b", "model": "round_one:1"},
            {"name": "latest", "model": "latest", "from_round": 3}]


def test_almas_mix_is_m1a_m1b_then_the_latest_from_round_three() -> None:
    from alma_ray.recipes.alma.plan import mix_line, round_line

    config = AlmaConfig.model_validate(dict(
        base_model="m", judge={"model": "m"}, rounds=4, seed_sft={"sources": ["embedded:tiny-sft"]},
        generation={"n": 6, "checkpoints": ALMA_MIX}))
    assert round_line(config, 1).startswith("seed_sft -> sft (x2 seeds")  # round 1 samples nothing
    assert mix_line(config, 2) == "m1a x3, m1b x3"
    assert mix_line(config, 3) == mix_line(config, 4) == "m1a x2, m1b x2, latest x2"
    trained = Trained(latest="r1/sft", round_one=["r1/sft", "r1/sft_seed1"])
    assert trained.models(config, {}, 2) == {"m1a": "r1/sft", "m1b": "r1/sft_seed1"}
    dpo = config.model_copy(update={"train": config.train.model_copy(update={"objective": "dpo"})})
    assert "pairs (best vs random) -> dpo (from M1a, on the pairs of rounds 2..r)" in round_line(dpo, 3)


@pytest.mark.parametrize("mix, error", [
    ([{"name": "m1a", "model": "round_one:0"}], "no checkpoint samples in round 1"),  # no seed SFT: round 1 samples
    ([{"name": "new", "model": "latest", "from_round": 1}], "from_round=1, but its model 'latest' is trained in"),
    ([{"name": "m", "model": "m", "from_round": 3}], "no checkpoint samples in round 1"),
])
def test_a_mix_naming_a_checkpoint_without_a_model_in_a_round_is_refused(mix: list, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AlmaConfig.model_validate(dict(base_model="m", judge={"model": "m"}, rounds=3,
                                       generation={"checkpoints": mix}))


def test_the_gate_stops_a_judge_below_min_accuracy_and_names_it() -> None:
    from pathlib import Path

    from alma_ray.recipes.alma import JudgeGateError, gate
    from alma_ray.store import Manifest, StageResult

    stats = {"accuracy": 0.5, "pairs": 12, "judge": "round_000/judge_distill", "preference_set": "embedded:x",
             "table": []}
    manifest = Manifest(stage="judge_gate", round=0, rows=3, config_hash="", input_hashes={}, wall_s=0.0,
                        started_at=0.0, stats=stats)
    result = StageResult(Path("runs/x/round_000/judge_gate"), manifest, skipped=False)
    gate(result, None)
    gate(result, 0.5)
    with pytest.raises(JudgeGateError, match=r"round_000/judge_distill ordered 0.500 of 12 .* embedded:x, below "
                                             r"judge.min_accuracy=0.6"):
        gate(result, 0.6)


def test_the_gate_bounds_how_often_the_judge_prefers_the_longer_or_the_shorter_answer() -> None:
    from pathlib import Path

    from alma_ray.recipes.alma import JudgeGateError, gate
    from alma_ray.store import Manifest, StageResult

    def result(longer: float | None) -> StageResult:
        stats = {"accuracy": 0.9, "pairs": 12, "judge": "j", "preference_set": "p", "prefers_longer": longer}
        return StageResult(Path("run/round_000/judge_gate"), Manifest(
            stage="judge_gate", round=0, rows=3, config_hash="", input_hashes={}, wall_s=0.0, started_at=0.0,
            stats=stats), skipped=False)

    for longer in (0.25, 0.5, 0.75, None):  # within [1 - 0.75, 0.75], or nothing to measure
        gate(result(longer), 0.8, 0.75)
    gate(result(0.9), 0.8)  # measured, not bounded
    with pytest.raises(JudgeGateError, match=r"preferred the longer answer in 0.900 .* judge.max_length_preference"
                                             r"=0.75"):
        gate(result(0.9), 0.8, 0.75)
    with pytest.raises(JudgeGateError, match=r"preferred the shorter answer in 0.800 "):
        gate(result(0.2), None, 0.75)


def test_the_gate_at_a_real_bar_refuses_a_random_judge_and_passes_a_rule_judge_of_the_property() -> None:
    """200 pairs whose chosen answer has a property the rejected one lacks (it names the capital), lengths drawn
    apart from it: the rule judge that scores the property (``alma_ray.judge.rules``) orders all of them; a judge
    that scores at random orders about half. At the bar 0.8 the gate passes the one and refuses the other (the
    accuracies as the gate stage computes them)."""
    from pathlib import Path

    import numpy as np

    from alma_ray.config import RuleConfig
    from alma_ray.judge.annotations import pairwise_accuracy
    from alma_ray.judge.rules import RuleScorer
    from alma_ray.recipes.alma import JudgeGateError, gate
    from alma_ray.store import Manifest, StageResult

    rng = np.random.default_rng(0)
    chosen = [f"The capital is Paris. {'More words. ' * int(k)}" for k in rng.integers(0, 5, 200)]
    rejected = [f"I am not sure. {'More words. ' * int(k)}" for k in rng.integers(0, 5, 200)]
    rule = RuleScorer(RuleConfig(contains=r"\bParis\b", ends_sentence=True))

    def reads(answer: str) -> float:
        (row,) = rule.score(["What is the capital of France?"], [answer])
        return float(row["score"])

    def result(scores: tuple[np.ndarray, np.ndarray]) -> StageResult:
        acc = pairwise_accuracy(*scores)
        stats = {"accuracy": acc.accuracy, "pairs": acc.pairs, "judge": "j", "preference_set": "by construction"}
        return StageResult(Path("run/round_000/judge_gate"), Manifest(
            stage="judge_gate", round=0, rows=3, config_hash="", input_hashes={}, wall_s=0.0, started_at=0.0,
            stats=stats), skipped=False)

    good = result((np.array([reads(a) for a in chosen]), np.array([reads(a) for a in rejected])))
    random = result((rng.uniform(0, 10, 200), rng.uniform(0, 10, 200)))
    assert good.manifest.stats["accuracy"] == 1.0 and 0.4 < random.manifest.stats["accuracy"] < 0.6
    gate(good, 0.8)
    with pytest.raises(JudgeGateError, match=r"ordered 0\.\d+ of 200 .* below judge.min_accuracy=0.8"):
        gate(random, 0.8)
