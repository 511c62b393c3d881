"""ALMoST (Kim et al., 2023). Round 0 is the synthetic feedback: prompts mined from the seeds (``mined``) -> one
response per prompt from each vanilla configuration of the grid (``responses``, rule-filtered) -> comparisons
ranked by the prior (``comparisons``, length-filtered) -> the reward model (``reward``) and its check on
preference pairs it never saw (``reward_check``). Round 1 is RM-guided self-play: dialogues whose assistant turns
are the RM's best of k (``selfplay``) -> SFT rows (``demonstrations``) -> SFT of the base model (``sft``) -> the
held-out prompts answered by the base model, the prompted player and the SFT model, scored by the RM (``probe``,
``probe_prompted``, ``eval``, ``eval_prompted``, ``eval_summary``). PPO against the RM comes next.

Every stage is committed to the run directory (alma_ray.store) and skipped when a rerun finds it done.
"""

from __future__ import annotations

from pathlib import Path

from alma_ray.config import AlmostConfig
from alma_ray.demonstrations import (
    DIALOGUE_TEMPLATE,
    TURN_STOP,
    Dialogue,
    check_shots,
    load_demonstrations,
    prompted,
)
from alma_ray.engines.registry import Engines
from alma_ray.ids import prompt_id
from alma_ray.judge.preferences import load_preferences
from alma_ray.models.registry import resolve_model
from alma_ray.placement import Plan
from alma_ray.recipes.almost import report
from alma_ray.recipes.almost.plan import plan
from alma_ray.recipes.base import Log, Run, RunSummary, seed_split, start
from alma_ray.reward import RewardServer
from alma_ray.stages.compare import Comparisons
from alma_ray.stages.configured import ConfiguredResponses
from alma_ray.stages.generate import Sample, Share
from alma_ray.stages.mine import Mine
from alma_ray.stages.reward import RewardCheck, RewardEval, RewardScore, sample_pairs
from alma_ray.stages.selfplay import Demonstrations, SelfPlay
from alma_ray.stages.train import Train
from alma_ray.store import RunStore, StageResult
from alma_ray.train.objectives import SFT, Reward

KEPT = [("split", "==", "train"), ("length_filter", "==", "")]
HELDOUT = [("split", "==", "heldout"), ("length_filter", "==", "")]
RM = Reward(DIALOGUE_TEMPLATE, chat=False, keep_response=True)
DEMONSTRATED = SFT(DIALOGUE_TEMPLATE, chat=False, keep_response=True)
"""ALMoST trains in the dialogue format (never a chat template); a long dialogue keeps its last turn."""


class ALMoSTRecipe:
    name = "almost"

    def plan(self, config: AlmostConfig) -> Plan:
        return plan(config)

    def report(self, run_dir: Path) -> list[Path]:
        return report.write_all(run_dir)

    def check(self, config: AlmostConfig) -> None:
        seed_split(config, config.mining)
        check_shots(config)
        if config.reward.check_pairs:
            load_preferences(config.reward.check_pairs)

    def run(self, config: AlmostConfig, store: RunStore, log: Log = print) -> RunSummary:
        m = config.mining
        with start(config, store, log, m) as started:
            run, engines, base, seeds = started.run, started.engines, started.base, started.seeds
            heldout, pool = started.heldout, started.rest
            log(f"seeds: {len(seeds.prompts)} prompts ({len(pool)} shown while mining, {len(heldout)} held out)")
            demos = {name: load_demonstrations(src) for name, src in config.demonstrations.items()}
            models = {g.name: resolve_model(config.model_of(g)) for g in config.responses.grid}
            player = config.player
            # round 0: synthetic feedback -> reward model
            mined = run.stage(0, Mine(m, base, config.base_model, pool, heldout, config.seed, engines))
            responses = run.stage(0, ConfiguredResponses(config.responses, config.seed, demos, models, engines),
                                  read=mined)
            comparisons = run.stage(0, Comparisons(config.responses.tiers, config.reward.heldout,
                                                   f"{config.seed}:rm-heldout",
                                                   prompts=mined.manifest.stats["accepted"]), read=responses)
            engines.keep_only({models[player.name], base})  # the player self-plays, the base answers the probe
            rm = run.stage(0, Train("reward", RM, config.reward_training,
                                    config.resources, model=base, seed=config.train.seed,
                                    examples=[comparisons], where=KEPT, heldout=HELDOUT, engines=engines))
            server = RewardServer(str(rm.path), DIALOGUE_TEMPLATE, config.reward.max_seq_len,
                                  label="round_000/reward")
            if config.reward.check_pairs:
                pairs = sample_pairs(load_preferences(config.reward.check_pairs), config.reward.check_max_pairs,
                                     seed=config.seed)
                run.stage(0, RewardCheck(server, engines, pairs))
            # round 1: RM-guided self-play -> SFT of the base model
            play = run.stage(1, SelfPlay(config.selfplay, player.name, models[player.name], demos[player.demos],
                                         player.shots, server, engines, config.seed), read=mined)
            rows = run.stage(1, Demonstrations(), read=play)
            engines.keep_only({base}, [server])
            sft = run.stage(1, Train("sft", DEMONSTRATED, config.train, config.resources,
                                     model=base, seed=config.train.seed, examples=[rows],
                                     engines=engines))
            if heldout:
                self.evaluate(config, run, engines, server, heldout=heldout, base=base, sft=sft,
                              player=(models[player.name], demos[player.demos], player.shots))
            log(f"reports: {', '.join(str(p) for p in report.write_all(store.run_dir))}")
        return started.run.summary

    def evaluate(self, config: AlmostConfig, run: Run, engines: Engines, server: RewardServer, *,
                 heldout: list[str], base: str, sft: StageResult, player: tuple[str, list[Dialogue], int]) -> None:
        """The held-out prompts answered by the base model and the SFT model (zero-shot, dialogue format) and by the
        prompted player (its demonstrations first), scored by the RM; ``eval_summary`` compares them."""
        ev = config.eval
        sampling = dict(temperature=ev.temperature, max_tokens=ev.max_tokens, stop=TURN_STOP,
                        **({"min_tokens": ev.min_tokens} if ev.min_tokens else {}))
        rows = [{"prompt": p, "prompt_id": prompt_id(p)} for p in heldout]
        probe = run.stage(1, Sample("probe", [Share("base", base, 1, sampling, chat=False),
                                              Share("sft", str(sft.path), 1, sampling, chat=False)], engines,
                                    seed_salt=f"{config.seed}:probe", completion_template=DIALOGUE_TEMPLATE,
                                    prompts=rows))
        model, demos, shots = player
        framed = [{**r, "query": r["prompt"],
                   "prompt": prompted(demos, shots, [{"role": "human", "text": r["prompt"]}])} for r in rows]
        probe_prompted = run.stage(1, Sample("probe_prompted", [Share("prompted", model, 1, sampling, chat=False)],
                                             engines, seed_salt=f"{config.seed}:probe", completion_template="{prompt}",
                                             prompts=framed))
        engines.keep_only(set(), [server])  # on GPU the reward app needs the devices the samplers held
        scored = run.stage(1, RewardScore(server, engines), read=probe)
        scored_prompted = run.stage(1, RewardScore(server, engines, name="eval_prompted", prompt_column="query"),
                                    read=probe_prompted)
        run.stage(1, RewardEval([scored, scored_prompted], "sft"))


ALMOST = ALMoSTRecipe()
