"""ALMoST's plan: the stages of round 0 (synthetic feedback, the reward model) and round 1 (self-play, SFT,
evaluation), and the actors each starts. Pure: config in, ``Plan`` out."""

from __future__ import annotations

from alma_ray.config import AlmostConfig
from alma_ray.placement import Plan, Pool, engine_pool, train_pool


def grid_line(config: AlmostConfig) -> str:
    """The grid and the prior, e.g. ``faithful3 > hhh3 > [hhh1, base0]`` with each configuration's shots."""
    tiers = ["[" + ", ".join(t) + "]" if len(t) > 1 else t[0] for t in config.responses.tiers]
    aligned = [g.name for g in config.responses.grid if g.aligned]
    return " > ".join(tiers) + (f" (aligned, not vanilla: {', '.join(aligned)})" if aligned else "")


def plan(config: AlmostConfig) -> Plan:
    res, eng = config.resources, config.engine
    n = res.engines_per_checkpoint
    player = config.player
    base_uses = ["mined", "responses", *(["selfplay"] if config.model_of(player) == config.base_model else []),
                 *(["probe"] if config.mining.heldout else [])]
    pools: list[Pool] = [engine_pool("mined", f"sampler:{config.base_model}", n, engine=eng, resources=res,
                                     lifetime=", ".join(base_uses))]
    others = dict.fromkeys(config.model_of(g) for g in config.responses.grid if config.model_of(g) != config.base_model)
    for model in others:
        uses = "responses" + (", selfplay" if model == config.model_of(player) else "")
        pools.append(engine_pool("responses", f"sampler:{model}", n, engine=eng, resources=res, lifetime=uses))
    pools.append(train_pool("reward", "reward-train-worker", res))
    uses = ", ".join([*(["reward_check"] if config.reward.check_pairs else []), "selfplay",
                      *(["eval"] if config.mining.heldout else [])])
    pools.append(engine_pool("reward_check" if config.reward.check_pairs else "selfplay", "serve-reward-model",
                             res.judge_engines, engine=eng, resources=res, lifetime=uses))
    pools.append(engine_pool("selfplay", f"sampler:{config.model_of(player)} (the player, beside the reward app)", n,
                             engine=eng, resources=res))
    pools.append(train_pool("sft", "sft-worker", res))
    if config.mining.heldout:
        pools.append(engine_pool("probe", "sampler:sft", n, engine=eng, resources=res))
    sp = config.selfplay
    check = " -> reward_check" if config.reward.check_pairs else ""
    evaluate = " -> probe (base, sft) + probe_prompted -> eval + eval_prompted (RM) -> eval_summary" \
        if config.mining.heldout else ""
    steps = (("round 0", f"mined ({config.mining.num_requests} requests, {config.mining.shots}-shot, ROUGE-L < "
                         f"{config.mining.rouge_threshold}) -> responses [{grid_line(config)}] -> comparisons "
                         f"(rubric pairs, length filter) -> reward{check}"),
             ("round 1", f"selfplay ({player.name}: best of k={sp.k} by the RM, up to {sp.turns} turns) -> "
                         f"demonstrations -> sft (from the base){evaluate}"))
    return Plan("almost", tuple(pools), steps)
