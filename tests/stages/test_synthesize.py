"""Cleaning and filtering synthesized prompts: every candidate gets exactly one outcome, in filter order."""

from __future__ import annotations

import pandas as pd

from alma_ray.ids import prompt_id
from alma_ray.stages.synthesize import FILTERS, HEADER, SLOT, classify, clean


def test_clean_keeps_the_first_request_only() -> None:
    assert clean("  Write a haiku about rain.\n\nRequest: another one") == "Write a haiku about rain."
    assert clean(f"Plan a trip to Oslo. {SLOT} Plan another") == "Plan a trip to Oslo."


def test_each_candidate_gets_the_first_filter_it_fails() -> None:
    seed = "Explain how vaccines work."
    cases = {  # completion, finish reason -> expected outcome
        ("", "stop"): "empty",
        ("Hi", "stop"): "too_short",
        ("x" * 90 + " word", "stop"): "too_long",
        ("Describe the history of the printing press and its effect on", "length"): "cut_off",
        (HEADER.strip(), "stop"): "template_leak",
        ("1234 5678 90 !!! ?? ##", "stop"): "non_text",
        ("\ufffd\ufffd broken bytes here", "stop"): "non_text",
        (seed, "stop"): "repeats_seed",
        ("Write a limerick about a cat who codes.", "stop"): "",
    }
    batch = pd.DataFrame({"response": [c for c, _ in cases], "finish_reason": [f for _, f in cases],
                          "seed": range(len(cases)), "request_index": range(len(cases))})
    out = classify(batch, seed_ids={prompt_id(seed)}, min_chars=4, max_chars=80, keep_cut_off=False, source="s")
    assert list(out.reject) == list(cases.values())
    assert set(out.reject) - {""} <= set(FILTERS)
    assert out.prompt_id.iloc[-1] == prompt_id("Write a limerick about a cat who codes.")
    kept = classify(batch, seed_ids=set(), min_chars=4, max_chars=80, keep_cut_off=True, source="s")
    assert kept.reject.iloc[3] == ""  # a cut-off prompt passes when asked to keep them
