"""ALMoST's rule filter against hand-worked responses, and the grid's requests (each configuration's own prompt,
demonstrations and seed)."""

from __future__ import annotations

import numpy as np
import pytest

from alma_ray.config import GridEntry
from alma_ray.demonstrations import PREAMBLE, load_demonstrations
from alma_ray.stages.configured import grid_requests, rule_broken

GOOD = "Canberra is the capital of Australia, chosen as a compromise between Sydney and Melbourne."


@pytest.mark.parametrize("response, finish, rule", [
    (GOOD, "stop", ""),
    ("", "prompt_too_long", "prompt_too_long"),
    ("   ", "stop", "empty"),
    (GOOD + " Human: and now?", "stop", "dialogue_marker"),
    ("Yes, it is.", "stop", "too_short"),
    ("Could you tell me more about which Australia you mean, the country or the continent?", "stop",
     "ends_in_question"),
    ("Here are the main facts about the capital of Australia that you asked about:", "stop", "ends_in_colon"),
    ("Well, the capital of Australia is Canberra, which many people do not expect at first.", "stop",
     "starts_with_well"),
    ("Wellington is the capital of New Zealand; the capital of Australia is Canberra.", "stop", ""),
    ("The capital of Australia is Canberra, a planned city between Sydney and Melbourne", "length",
     "no_final_punctuation"),
    ("I don't know the capital of Australia, but an atlas or a search engine will tell you.", "stop",
     "does_not_know"),
])
def test_rule_filter_hand_worked(response: str, finish: str, rule: str) -> None:
    assert rule_broken(response, finish, min_chars=50) == rule


def test_only_the_configured_rules_count() -> None:
    assert rule_broken("Yes?", "stop", min_chars=50, rules=("empty",)) == ""
    assert rule_broken("Yes?", "stop", min_chars=50, rules=("empty", "ends_in_question")) == "ends_in_question"


def test_grid_requests_frame_each_configuration() -> None:
    hhh, faithful = load_demonstrations("embedded:hhh"), load_demonstrations("embedded:faithful")
    entries = [(GridEntry(name="f3", shots=3, demos="faithful"), faithful),
               (GridEntry(name="h1", shots=1, demos="hhh"), hhh)]
    out = grid_requests({"prompt": np.array(["Why is the sea salty?"]), "prompt_id": np.array(["p1"]),
                         "source": np.array(["mined:x"])}, entries=entries, label="base")
    assert out["config"] == ["f3", "h1"] and out["query_id"] == ["p1", "p1"]
    assert len(set(out["prompt_id"])) == 2  # each configuration samples with its own seed
    for text, demos, shots in zip(out["prompt"], (faithful, hhh), (3, 1)):
        assert text.startswith(PREAMBLE) and text.endswith("Human: Why is the sea salty?\n\nAssistant:")
        assert text.count("Human:") == sum(t["role"] == "human" for d in demos[:shots] for t in d) + 1
