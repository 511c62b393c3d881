"""ALMA. Round 0 builds the judge (when judge.build is set: ``judge``) and the prompt pool (few-shot synthesis,
dedup, embeddings, k-means: ``pool``). Then each round: draw K prompts from K clusters -> sample N responses from
the checkpoint mix -> judge -> best-of-N -> SFT the base model on D_1..D_r -> probe the new checkpoint.

Every stage is committed to the run directory (alma_ray.store) and skipped when a rerun finds it done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from alma_ray.config import LATEST, ROUND_ONE, AlmaConfig, names_run_model
from alma_ray.ids import prompt_id
from alma_ray.judge.annotations import DEMO, accuracy_table, load_annotations
from alma_ray.judge.serve import Panel, ServedJudge
from alma_ray.models.registry import resolve_model
from alma_ray.placement import Plan
from alma_ray.recipes.alma import report
from alma_ray.recipes.alma.judge import build_judge
from alma_ray.recipes.alma.plan import plan
from alma_ray.recipes.alma.pool import PromptPool, build_pool, draw
from alma_ray.recipes.base import Log, Run, RunSummary
from alma_ray.seeds import heldout_and_pool, load_seeds
from alma_ray.stages.engines import Engines, judge_app_name
from alma_ray.stages.generate import Sample, Share, mix
from alma_ray.stages.score import Score
from alma_ray.stages.select import SelectBest
from alma_ray.stages.train import Train
from alma_ray.store import MANIFEST, RunStore, StoreError
from alma_ray.train.objectives import SFT


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


@dataclass
class Trained:
    """What the rounds so far have produced: D_1..D_r and the models (ALMA's M1a, M1b, and the latest)."""

    selected: list[str] = field(default_factory=list)
    latest: str | None = None
    round_one: list[str] = field(default_factory=list)

    def models(self, config: AlmaConfig, fixed: dict[str, str]) -> dict[str, str]:
        """Checkpoint name -> folder for this round's mix: the fixed models and those this run has trained."""
        out = dict(fixed)
        for c in config.generation.checkpoints:
            if (folder := round_model(c.model, latest=self.latest, round_one=self.round_one)) is not None:
                out[c.name] = folder
        return out


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
        seeds = load_seeds(config.synthesis.seeds, skip_bad=config.synthesis.skip_bad_seed_lines,
                           max_chars=config.synthesis.max_seed_chars)
        heldout_and_pool(seeds.prompts, heldout=config.synthesis.heldout, seed=config.seed)
        build = config.judge.build
        if build is not None and build.annotations != DEMO:
            load_annotations(build.annotations)

    def run(self, config: AlmaConfig, store: RunStore, log: Log = print) -> RunSummary:
        started = time.time()
        run = Run(store, log)
        base = resolve_model(config.base_model)
        seeds = load_seeds(config.synthesis.seeds, skip_bad=config.synthesis.skip_bad_seed_lines,
                           max_chars=config.synthesis.max_seed_chars)
        heldout, fewshot = heldout_and_pool(seeds.prompts, heldout=config.synthesis.heldout, seed=config.seed)
        log(f"seeds: {len(seeds.prompts)} prompts ({len(fewshot)} few-shot pool, {len(heldout)} held out); "
            f"skipped: {seeds.skipped_bad_lines} bad lines, {seeds.skipped_too_long} over synthesis.max_seed_chars, "
            f"{seeds.skipped_other} duplicates or non-English")
        judges = {m.name: ServedJudge(m.name, resolve_model(m.model), m.weight, m.chat_template, label=m.model)
                  for m in config.judge.members}
        with Engines(config.engine, config.resources, log=log, app=judge_app_name(store.run_dir)) as engines:
            if config.judge.build is not None:  # ALMA builds the judge once, then holds it fixed for every round
                main = judges[config.judge.name]
                built = build_judge(config, run, engines, base=base, judge_start=main.model, seed_prompts=fewshot)
                judges[main.name] = ServedJudge(main.name, built.model, main.weight, main.chat,
                                                label=f"round_000/{built.stage}")
                log("judge accuracy on held-out preference pairs:\n" + accuracy_table(built.table))
            panel = Panel.of(config.judge, list(judges.values()))
            fixed = {c.name: resolve_model(c.model) for c in config.generation.checkpoints
                     if not names_run_model(c.model)}
            pool = build_pool(config, run, engines, base=base, seeds=fewshot, heldout=heldout,
                              sampled_later=set(fixed.values()), seed_bad_lines=seeds.skipped_bad_lines)
            log(f"[round 0] report -> {report.write_round(store.path(0, ''))}")
            trained = Trained()
            for r in range(1, config.rounds + 1):
                self.round(config, run, engines, r, pool=pool, panel=panel, base=base, fixed=fixed,
                           trained=trained, heldout=heldout)
                log(f"[round {r}] report -> {report.write_round(store.path(r, ''))}")
        run.summary.wall_s = time.time() - started
        return run.summary

    def round(self, config: AlmaConfig, run: Run, engines: Engines, r: int, *, pool: PromptPool, panel: Panel,
              base: str, fixed: dict[str, str], trained: Trained, heldout: list[str]) -> None:
        """One round: draw -> generate -> score -> select -> train -> probe."""
        gen, train = config.generation, config.train
        shares = mix(gen, trained.models(config, fixed))
        engines.keep_only({s.model for s in shares}, [panel])  # what this round samples and the fixed judge
        prompts = draw(config, run, r, pool)
        responses = run.stage(r, Sample(
            "responses", shares, engines, seed_salt=f"{config.seed}:{r}:responses",
            completion_template=gen.completion_template, too_long=gen.too_long,
            pool_size=config.resources.engines_per_checkpoint, prompt_rows=prompts.manifest.rows), read=prompts)
        scores = run.stage(r, Score(panel, engines, rows=responses.manifest.rows), read=responses)
        selected = run.stage(r, SelectBest(scored_rows=scores.manifest.rows), read=scores)
        trained.selected.append(str(selected.path))
        init = base if train.init == "base" or trained.latest is None else trained.latest
        engines.before_training()
        sft = [run.stage(r, Train("sft" if k == 0 else f"sft_seed{k}", SFT(gen.completion_template), train,
                                  config.resources, model=init, seed=train.seed + k,
                                  examples=list(trained.selected)), after=[selected])
               for k in range(train.round_one_seeds if r == 1 else 1)]
        trained.latest = str(sft[0].path)
        if r == 1:
            trained.round_one = [str(s.path) for s in sft]
        if heldout:
            probe = Share(f"round_{r:03d}/sft", trained.latest, 1, dict(
                temperature=gen.probe_temperature, max_tokens=gen.max_tokens, stop=gen.stop or None))
            run.stage(r, Sample("probe", [probe], engines, seed_salt=f"{config.seed}:{r}:probe",
                                completion_template=gen.completion_template, too_long=gen.too_long,
                                prompts=[{"round": r, "prompt_id": prompt_id(p), "prompt": p} for p in heldout]),
                      after=[sft[0]])


ALMA = ALMARecipe()
