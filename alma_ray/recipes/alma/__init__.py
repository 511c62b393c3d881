"""ALMA. Round 0 builds the judge (when judge.build is set: ``judge``), gates it (``judge.min_accuracy``), builds
the prompt pool (few-shot synthesis, dedup, embeddings, k-means: ``pool``) and evaluates the base model. Round 1 is
seed SFT when ``seed_sft`` is set (M1a, M1b); every other round: draw K prompts from K clusters -> sample N
responses from the round's checkpoint mix -> judge -> best-of-N -> SFT the base model on D_1..D_r (or DPO pairs ->
DPO from M1a) -> evaluate the new model on the held-out prompts.

Every stage is committed to the run directory (alma_ray.store) and skipped when a rerun finds it done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alma_ray.config import LATEST, ROUND_ONE, AlmaConfig, ConfigError, JudgeMember, RuleConfig, names_run_model
from alma_ray.engines.registry import Engines
from alma_ray.errors import AlmaError
from alma_ray.ids import prompt_id
from alma_ray.judge import ifbench
from alma_ray.judge.annotations import DEMO, accuracy_table, load_annotations
from alma_ray.judge.preferences import load_preferences
from alma_ray.judge.serve import Panel, ServedJudge
from alma_ray.models.registry import resolve_model
from alma_ray.placement import Plan
from alma_ray.recipes.alma import report
from alma_ray.recipes.alma.judge import build_judge
from alma_ray.recipes.alma.plan import plan
from alma_ray.recipes.alma.pool import PromptPool, build_pool, draw, synthesize
from alma_ray.recipes.base import Log, Run, RunSummary, seed_split, start
from alma_ray.seed_sft import load_seed_sft
from alma_ray.stages.evaluate import Evals, EvalSummary
from alma_ray.stages.generate import Sample, Share, mix
from alma_ray.stages.judge_build import JudgeGate
from alma_ray.stages.score import Score
from alma_ray.stages.seed_sft import SeedRows
from alma_ray.stages.select import LengthControl, SelectBest, SelectPairs
from alma_ray.stages.train import Train
from alma_ray.store import MANIFEST, RunStore, StageResult, StoreError
from alma_ray.train.objectives import DPO, SFT


def round_model(model: str, *, latest: str | None, round_one: list[str]) -> str | None:
    """The folder a checkpoint's ``model`` names this round: a fixed model, or one this run trained (or None)."""
    if model == LATEST:
        return latest
    if model.startswith(ROUND_ONE):
        k = int(model[len(ROUND_ONE):])
        return round_one[k] if k < len(round_one) else None
    return None


def held_rounds(run_dir: Path) -> int:
    """The last round (>= 1) of which a run directory holds a committed stage; 0 when none."""
    rounds = [int(d.name[len("round_"):]) for d in run_dir.glob("round_[0-9][0-9][0-9]")
              if any(d.glob(f"*/{MANIFEST}"))]
    return max([r for r in rounds if r >= 1], default=0)


class JudgeGateError(AlmaError):
    """The run's judge is below ``judge.min_accuracy`` on the gate's preference set."""


@dataclass
class Trained:
    """What the rounds so far have produced: D_1..D_r (or the DPO pairs), the models (ALMA's M1a, M1b, and the
    latest) and each round's evaluation stages."""

    selected: list[StageResult] = field(default_factory=list)
    pairs: list[StageResult] = field(default_factory=list)
    latest: str | None = None
    round_one: list[str] = field(default_factory=list)
    evals: dict[int, Evals] = field(default_factory=dict)

    def models(self, config: AlmaConfig, fixed: dict[str, str], r: int) -> dict[str, str]:
        """Checkpoint name -> folder for round ``r``'s mix: the fixed models and those this run has trained, each
        from its ``from_round``."""
        out = {}
        for c in config.generation.checkpoints:
            if not config.samples_in(c, r):
                continue
            folder = fixed.get(c.name) or round_model(c.model, latest=self.latest, round_one=self.round_one)
            if folder is None:
                raise AlmaError(f"checkpoint {c.name} (model {c.model}) has no model in round {r}")
            out[c.name] = folder
        return out


def instruction_prompts(r: int, n: int) -> list[dict[str, Any]]:
    """The first ``n`` held-out IFBench prompts as probe rows, each with its instructions (JSON)."""
    return [{"round": r, "prompt_id": f"ifbench-{p['key']}", "prompt": p["prompt"],
             "instructions": json.dumps(p["instructions"])} for p in ifbench.eval_prompts(n)]


def served(member: JudgeMember) -> ServedJudge:
    """A judge of the config served: its model resolved to a folder, or its rules."""
    return ServedJudge.of(member, resolve_model(member.model) if member.model is not None else "")


def gate(result: StageResult, min_accuracy: float | None, max_length_preference: float | None = None) -> None:
    """Stop the run when the judge's real-valued accuracy on the gate's set is below ``min_accuracy``, or when it
    prefers the longer (or the shorter) answer more often than ``max_length_preference``."""
    s = result.manifest.stats
    if min_accuracy is not None and not s["accuracy"] >= min_accuracy:
        unscored = f" ({s['unscored']} it could not score: too long for engine.max_model_len?)" \
            if s.get("unscored") else ""
        raise JudgeGateError(
            f"judge gate: {s['judge']} ordered {s['accuracy']:.3f} of {s['pairs']} preference pairs right{unscored} "
            f"(real-valued scores, ties count as wrong) on {s['preference_set']}, below judge.min_accuracy="
            f"{min_accuracy}; per judge: {result.path}. Build a better judge (judge.build: more or better "
            f"annotations, more epochs), give another judge.model, or lower judge.min_accuracy (it is not part of "
            f"the run's digest: the same run directory continues)")
    longer = s.get("prefers_longer")
    if max_length_preference is not None and longer is not None and \
            not 1 - max_length_preference <= longer <= max_length_preference:
        side = "longer" if longer > 0.5 else "shorter"
        raise JudgeGateError(
            f"judge gate: {s['judge']} preferred the {side} answer in {max(longer, 1 - longer):.3f} of the pairs it "
            f"ordered whose answers differ in length on {s['preference_set']}, above judge.max_length_preference="
            f"{max_length_preference}: it would select by length. Per judge: {result.path}. Use a judge with less "
            f"length bias, a length-aware selection, or raise judge.max_length_preference (not part of the run's "
            f"digest)")


class ALMARecipe:
    name = "alma"

    def plan(self, config: AlmaConfig) -> Plan:
        return plan(config)

    def report(self, run_dir: Path) -> list[Path]:
        return report.write_all(run_dir)

    def check(self, config: AlmaConfig) -> None:
        held = held_rounds(config.run_dir)
        if held > config.rounds:
            raise StoreError(f"{config.run_dir} already holds {held} rounds and rounds={config.rounds}: a run "
                             f"only extends; give rounds={held} or more, or another name=...")
        _, heldout, _ = seed_split(config, config.synthesis)
        build = config.judge.build
        if build is not None and build.annotations != DEMO:
            load_annotations(build.annotations)
        if config.seed_sft is not None:
            load_seed_sft(config.seed_sft, heldout=heldout)
        if config.judge.gated:
            load_preferences(config.judge.gate_pairs)
        if config.eval.instructions:
            try:
                ifbench.eval_prompts(config.eval.instructions)
            except ValueError as e:
                raise ConfigError(f"{e}: lower eval.instructions") from None

    def run(self, config: AlmaConfig, store: RunStore, log: Log = print) -> RunSummary:
        with start(config, store, log, config.synthesis) as started:
            run, engines, base, seeds = started.run, started.engines, started.base, started.seeds
            heldout, fewshot = started.heldout, started.rest
            log(f"seeds: {len(seeds.prompts)} prompts ({len(fewshot)} few-shot pool, {len(heldout)} held out); "
                f"skipped: {seeds.skipped_bad_lines} bad lines, {seeds.skipped_too_long} over "
                f"synthesis.max_seed_chars, {seeds.skipped_other} duplicates or non-English")
            judges = {m.name: served(m) for m in config.judge.members}
            if config.judge.build is not None:  # ALMA builds the judge once, then holds it fixed for every round
                main = judges[config.judge.name]
                built = build_judge(config, run, engines, base=base, judge_start=main.model, seed_prompts=fewshot)
                judges[main.name] = ServedJudge(main.name, built.model, main.weight, main.chat,
                                                label=f"round_000/{built.stage}")
                log("judge accuracy on held-out preference pairs:\n" + accuracy_table(built.table))
            panel = Panel.of(config.judge, list(judges.values()))
            if config.judge.gated:  # before the judge selects any data
                pairs = load_preferences(config.judge.gate_pairs)
                gated = run.stage(0, JudgeGate(panel, pairs, engines, ", ".join(config.judge.gate_pairs)))
                log("judge gate:\n" + accuracy_table(gated.manifest.stats["table"]))
                gate(gated, config.judge.min_accuracy, config.judge.max_length_preference)
            fixed = {c.name: resolve_model(c.model) for c in config.generation.checkpoints
                     if not names_run_model(c.model)}
            synthesis = synthesize(config, run, engines, base=base, seeds=fewshot, heldout=heldout,
                                   seed_bad_lines=seeds.skipped_bad_lines)
            trained = Trained()
            # the base model's answers (what round 1 is compared with), while its synthesis engines are up
            self.evaluate(config, run, engines, 0, model=base, label="base", panel=panel, heldout=heldout,
                          trained=trained)
            if base not in fixed.values():
                engines.release(base)
            pool = build_pool(config, run, engines, synthesis, base=base, seeds=fewshot, heldout=heldout)
            log(f"[round 0] report -> {report.write_round(store.path(0, ''))}")
            for r in range(1, config.rounds + 1):
                self.round(config, run, engines, r, pool=pool, panel=panel, base=base, fixed=fixed,
                           trained=trained, heldout=heldout)
                log(f"[round {r}] report -> {report.write_round(store.path(r, ''))}, "
                    f"{report.write_rounds(store.run_dir)}")
        return started.run.summary

    def round(self, config: AlmaConfig, run: Run, engines: Engines, r: int, *, pool: PromptPool, panel: Panel,
              base: str, fixed: dict[str, str], trained: Trained, heldout: list[str]) -> None:
        """One round: seed SFT (round 1, when set), or draw -> generate -> score -> select -> train; then
        evaluate."""
        gen, train = config.generation, config.train
        if r == 1 and config.seed_sft is not None:
            engines.keep_only(set(), [panel])
            data = run.stage(r, SeedRows(config.seed_sft, heldout))
            if config.seed_sft.in_later_rounds:
                trained.selected.append(data)
            examples = [data]
        else:
            shares = mix(gen, trained.models(config, fixed, r))
            engines.keep_only({s.model for s in shares}, [panel])  # what this round samples and the fixed judge
            prompts = draw(config, run, r, pool)
            responses = run.stage(r, Sample(
                "responses", shares, engines, seed_salt=f"{config.seed}:{r}:responses",
                completion_template=gen.completion_template, too_long=gen.too_long,
                pool_size=config.resources.engines_per_checkpoint), read=prompts)
            scores = run.stage(r, Score(panel, engines), read=responses)
            if train.objective == "dpo" and r > 1:  # ALMA's DPO variant: from M1a on the pairs of rounds 2..r
                done = run.stage(r, SelectPairs(train.dpo_rejected, f"{config.seed}:{r}:pairs", prompts=prompts),
                                 read=scores)
                trained.pairs.append(done)
                dpo = run.stage(r, Train("dpo", DPO.of(train, completion_template=gen.completion_template), train,
                                         config.resources, model=trained.round_one[0], seed=train.seed,
                                         examples=list(trained.pairs), engines=engines))
                trained.latest = str(dpo.path)
                self.evaluate(config, run, engines, r, model=trained.latest, label=f"round_{r:03d}/dpo",
                              panel=panel, heldout=heldout, trained=trained)
                return
            fit = scores.manifest.stats
            length = LengthControl(fit.get("score_length_slope") or 0.0, fit["mean_chars"] or 0.0) \
                if config.selection == "length_controlled" else None
            done = run.stage(r, SelectBest(length=length), read=scores)
            trained.selected.append(done)
            examples = list(trained.selected)
        init = base if train.init == "base" or trained.latest is None else trained.latest
        sft = [run.stage(r, Train("sft" if k == 0 else f"sft_seed{k}", SFT(gen.completion_template), train,
                                  config.resources, model=init, seed=train.seed + k, examples=examples,
                                  engines=engines))
               for k in range(train.round_one_seeds if r == 1 else 1)]
        trained.latest = str(sft[0].path)
        if r == 1:
            trained.round_one = [str(s.path) for s in sft]
        self.evaluate(config, run, engines, r, model=trained.latest, label=f"round_{r:03d}/sft", panel=panel,
                      heldout=heldout, trained=trained)

    def evaluate(self, config: AlmaConfig, run: Run, engines: Engines, r: int, *, model: str, label: str,
                 panel: Panel, heldout: list[str], trained: Trained) -> None:
        """Round ``r``'s model answers the held-out prompts (``probe``; and ``eval.samples`` sampled answers each,
        ``probe_sampled``); the run's judge scores them (``eval``, ``eval_sampled``), ``eval.judges`` the probe
        answers (``eval_judges``); with ``eval.instructions`` it answers held-out IFBench prompts that IFBench's
        checkers score (``probe_ifbench``, ``eval_ifbench``); ``eval_summary`` compares every judge's figures
        with the previous round's and M1a's."""
        if not heldout:
            return
        gen = config.generation
        greedy = dict(temperature=gen.probe_temperature, max_tokens=gen.max_tokens, stop=gen.stop or None)
        if gen.probe_min_tokens:
            greedy["min_tokens"] = gen.probe_min_tokens
        held = [{"round": r, "prompt_id": prompt_id(p), "prompt": p} for p in heldout]

        def answer(name: str, n: int, sampling: dict[str, Any], prompts: list[dict[str, Any]]) -> StageResult:
            return run.stage(r, Sample(name, [Share(label, model, n, sampling)], engines,
                                       seed_salt=f"{config.seed}:{r}:{name}", too_long=gen.too_long,
                                       completion_template=gen.completion_template, prompts=prompts))

        answers = answer("probe", 1, greedy, held)
        this = Evals(run.stage(r, Score(panel, engines, name="eval"), read=answers))
        if config.eval.samples:  # at the generation's own settings: what the next round would sample
            settings = dict(temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens,
                            stop=gen.stop or None)
            sampled = answer("probe_sampled", config.eval.samples, settings, held)
            this = replace(this, sampled=run.stage(r, Score(panel, engines, name="eval_sampled"), read=sampled))
        if config.eval.judges:
            judges = Panel.of(config.judge, [served(j) for j in config.eval.judges])
            this = replace(this, judges=run.stage(r, Score(judges, engines, name="eval_judges"), read=answers))
        if config.eval.instructions:  # held-out IFBench prompts, scored by its checkers
            checked = answer("probe_ifbench", 1, greedy, instruction_prompts(r, config.eval.instructions))
            checkers = Panel.of(config.judge, [ServedJudge(f"ifbench_{kind}", "", rules=RuleConfig(ifbench=kind))
                                               for kind in ("strict", "loose")])
            this = replace(this, ifbench=run.stage(r, Score(checkers, engines, name="eval_ifbench"), read=checked))
        run.stage(r, EvalSummary(this, trained.evals.get(r - 1), trained.evals.get(1) if r > 1 else None, r))
        trained.evals[r] = this


ALMA = ALMARecipe()
