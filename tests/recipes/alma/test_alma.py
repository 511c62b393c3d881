"""Which model each generation checkpoint samples in a round (ALMA: M1a, M1b and the latest model)."""

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
    assert trained.models(config, {"fixed": "/m"}) == {"fixed": "/m"}  # round 1: nothing trained yet
    trained.latest, trained.round_one = "r2/sft", ["r1/sft", "r1/sft_seed1"]
    assert trained.models(config, {"fixed": "/m"}) == {"fixed": "/m", "m1b": "r1/sft_seed1", "new": "r2/sft"}
