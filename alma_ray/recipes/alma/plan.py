"""ALMA's plan: the stages of round 0 and of each round (with the checkpoint mix per round), and the actors each
stage starts. Pure: config in, ``Plan`` out."""

from __future__ import annotations

from alma_ray.config import LATEST, ROUND_ONE, AlmaConfig
from alma_ray.placement import Plan, Pool, engine_pool, train_pool
from alma_ray.stages.generate import split_samples


def mix_line(config: AlmaConfig, r: int) -> str:
    """Round ``r``'s checkpoint mix, e.g. ``m1a x2, m1b x1`` (checkpoints without a model yet, or before their
    ``from_round``, give way)."""
    here = [c for c in config.generation.checkpoints if config.samples_in(c, r)]
    shares = split_samples(config.generation.n, [c.weight for c in here]) if here else []
    return ", ".join(f"{c.name} x{k}" for c, k in zip(here, shares) if k) or "(no checkpoint has a model)"


def evaluation(config: AlmaConfig) -> str:
    """The evaluation's stages, in one line."""
    return (" -> probe -> eval" + (" + probe_sampled -> eval_sampled" if config.eval.samples else "")
            + (" + eval_judges" if config.eval.judges else "")
            + (" + probe_ifbench -> eval_ifbench" if config.eval.instructions else "") + " -> eval_summary")


def round_line(config: AlmaConfig, r: int) -> str:
    """What round ``r`` runs, in one line."""
    train = config.train
    seeds = f" (x{train.round_one_seeds} seeds: M1a" + (", M1b" if train.round_one_seeds > 1 else "") + ")" \
        if r == 1 and train.round_one_seeds > 1 else ""
    evaluate = evaluation(config) if config.synthesis.heldout else ""
    if r == 1 and config.seed_sft is not None:
        return f"seed_sft -> sft{seeds}{evaluate}"
    head = f"prompts -> responses [{mix_line(config, r)}] -> scores -> "
    if train.objective == "dpo" and r > 1:
        return head + f"pairs (best vs {train.dpo_rejected}) -> dpo (from M1a, on the pairs of rounds 2..r){evaluate}"
    return head + f"selected -> sft{seeds}{evaluate}"


def plan(config: AlmaConfig) -> Plan:
    res, eng = config.resources, config.engine
    n = res.engines_per_checkpoint
    models = [c.model for c in config.generation.checkpoints]
    build = config.judge.build
    pools: list[Pool] = []
    steps = []
    # One pool of sampling engines per model, kept up for every stage that samples it.
    base_uses = ["distill_pairs"] if build is not None and build.distill_pairs else []
    base_uses += ["synthesis"] + (["probe (the base model)"] if config.synthesis.heldout else []) + (
        ["responses of every round"] if config.base_model in models else [])
    if build is not None:
        pools.append(train_pool("judge_sft", "judge-train-worker", res))
        built = ["annotations", "judge_sft"]
        if build.distill_pairs:
            pools += [engine_pool("distill_pairs", f"sampler:{config.base_model}", n, engine=eng, resources=res,
                                  lifetime=", ".join(base_uses) if len(base_uses) > 1 else ""),
                      engine_pool("distill_scores", "serve-judge:sft", res.judge_engines, engine=eng, resources=res),
                      train_pool("judge_distill", "judge-train-worker", res)]
            built += ["distill_pairs", "distill_scores", "judge_distill"]
        evaluated = ["base", "sft", *(["distilled"] if build.distill_pairs else [])]
        pools += [engine_pool("judge_eval", f"serve-judge:{name}", res.judge_engines, engine=eng, resources=res)
                  for name in evaluated]
        steps.append(("round 0", "judge build: " + " -> ".join([*built, "judge_eval"])))
    if config.judge.gated:
        bars = [f"real-valued accuracy >= {config.judge.min_accuracy}"] if config.judge.min_accuracy is not None \
            else []
        if config.judge.max_length_preference is not None:
            bars.append(f"longer answer preferred in at most {config.judge.max_length_preference} (or shorter)")
        steps.append(("round 0", f"judge_gate: {' and '.join(bars)} on {', '.join(config.judge.gate_pairs)}, "
                                 "else stop"))
    if base_uses[0] == "synthesis":
        pools.append(engine_pool("synthesis", f"sampler:{config.base_model}", n, engine=eng, resources=res,
                                 lifetime=", ".join(base_uses) if len(base_uses) > 1 else ""))
    pools.append(engine_pool("embeddings", "base-embedder", n, engine=eng, resources=res, gpus=1.0))
    base_eval = f"{evaluation(config)} (the base model, while its engines are up)" \
        if config.synthesis.heldout else ""
    steps.append(("round 0", "synthesis" + base_eval + " -> prompt pool: pool -> embeddings -> clusters"))
    for model in dict.fromkeys(m for m in models if m != config.base_model and m != LATEST):
        when = "rounds 2-" if model.startswith(ROUND_ONE) else "every round"
        pools.append(engine_pool("responses", f"sampler:{model}", n, engine=eng, resources=res,
                                 lifetime=f"responses of {when}" + (str(config.rounds) if when == "rounds 2-"
                                                                    else "")))
    pools += [engine_pool("scores", f"serve-judge:{m.name}", res.judge_engines, engine=eng, resources=res,
                          lifetime="scores of every round") for m in config.judge.members if m.rules is None]
    pools.append(train_pool("sft", "sft-worker", res))
    pools.append(engine_pool("probe", "sampler:latest", 1, engine=eng, resources=res,
                             lifetime="probe, then the next round's responses" if LATEST in models else ""))
    lines = [round_line(config, r) for r in range(1, config.rounds + 1)]
    start = 1
    for r in range(1, config.rounds + 1):  # consecutive rounds that run the same stages share a line
        if r == config.rounds or lines[r] != lines[r - 1]:
            steps.append((f"round {r}" if start == r else f"rounds {start}-{r}", lines[r - 1]))
            start = r + 1
    return Plan("alma", tuple(pools), tuple(steps))
