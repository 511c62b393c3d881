"""ALMoST's report sections: round 0 shows the mining filter yields, the rule filter per configuration, the
comparisons (pairs, length filter, how often the prior agrees with length), the reward model's held-out accuracy and
its check on preference sets; round 1 the self-play figures, the SFT loss and the evaluation (mean reward, win
rates, length)."""

from __future__ import annotations

from pathlib import Path

from alma_ray.report import manifests, table, write_report
from alma_ray.store import Manifest


def feedback_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "mined" in ms:
        s = ms["mined"].stats
        lines += ["## Prompt mining: filter yields", ""]
        lines += table(["filter", "rows"], [[k, v] for k, v in s["filters"].items()])
        lines += [f"ROUGE-L computed {s['rouge_scored']} times where all pairs would be {s['rouge_all_pairs']}.", ""]
    if "responses" in ms:
        per = ms["responses"].stats["rules_per_config"]
        rules = list(next(iter(per.values())))
        lines += ["## Configured responses: rule filter", ""]
        lines += table(["config", *rules], [[c, *[v[r] for r in rules]] for c, v in per.items()])
    if "comparisons" in ms:
        s = ms["comparisons"].stats
        lines += ["## Comparisons", ""]
        lines += table(["pairs", "dropped by length", "train", "held out", "prior agrees with length"],
                       [[s["pairs"], s["dropped_length"], s["train_pairs"], s["heldout_pairs"],
                         s["prior_agrees_length"]]])
    if "reward" in ms:
        s = ms["reward"].stats
        lines += ["## Reward model", "", f"held-out comparison accuracy: {s.get('heldout_pair_accuracy')} "
                  f"({s.get('heldout_batches', 0)} batches); {s.get('steps')} steps, last loss {s.get('loss')}", ""]
    if "reward_check" in ms:
        acc = ms["reward_check"].stats["accuracy"]
        lines += ["## Reward model on preference sets it never saw", ""]
        lines += table(["set", "pairs", "accuracy", "ties", "unscored"],
                       [[k, v["pairs"], v["accuracy"], v["ties"], v["unscored"]] for k, v in acc.items()])
    return lines


def selfplay_sections(round_dir: Path, ms: dict[str, Manifest]) -> list[str]:
    lines: list[str] = []
    if "selfplay" in ms:
        s = ms["selfplay"].stats
        lines += ["## RM-guided self-play", ""]
        lines += table(["player", "dialogues", "assistant turns", "turns per dialogue", "k", "ended by"],
                       [[s["player"], s["dialogues"], s["assistant_turns"], s["turns_per_dialogue"], s["k"],
                         s["ended_by"]]])
    if "eval_summary" in ms:
        rows = ms["eval_summary"].stats["table"]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["## Evaluation on the held-out prompts (scored by the reward model)", ""]
        lines += table(keys, [[r.get(k) for k in keys] for r in rows])
    return lines


def write_all(run_dir: Path) -> list[Path]:
    """Every round's report of an ALMoST run directory."""
    return [write_report(d, [feedback_sections, selfplay_sections])
            for d in sorted(Path(run_dir).glob("round_[0-9][0-9][0-9]")) if manifests(d)]
