"""ALMA's plan, a pure function of the config: stages in order, the checkpoint mix per round, the actors each
stage starts (CPU and GPU)."""

from pathlib import Path

from alma_ray.config import load_config
from alma_ray.recipes.alma.plan import mix_line, plan

TINY = Path(__file__).parents[3] / "jobs" / "configs" / "tiny.yaml"


def test_cpu_plan_fits_the_largest_stage_beside_the_engines_kept_up() -> None:
    p = plan(load_config(TINY))
    # the base model is also both checkpoints' model: one sampling engine, kept from synthesis through every
    # round's responses, and the judge app kept for every round's scores
    kept = [(pool.stage, pool.name) for pool in p.pools if pool.lifetime]
    assert kept == [("synthesis", "sampler:embedded:tiny-llama"), ("scores", "serve-judge:main")]
    assert p.kept_cpus == 2.0 and p.stage_needs("sft") == (3.0, 0.0)
    assert p.cpus_needed == 3.0 + 2.0 and p.gpus_needed == 0.0  # training beside the two kept engines
    text = p.describe()
    assert "prompts -> responses [tiny-a x2, tiny-b x1]" in text
    assert "kept up: synthesis, probe (the base model), responses of every round" in text


def test_gpu_plan_gives_each_engine_its_gpus() -> None:
    config = load_config(TINY, ["resources.use_gpu=true", "engine.tensor_parallel_size=2",
                                "resources.engines_per_checkpoint=3", "resources.train_workers=8",
                                "generation.checkpoints=[{name: a, model: m1}, {name: b, model: m2}]"])
    p = plan(config)
    assert p.stage_needs("responses") == (1.0 + 6, 12.0)  # 2 checkpoint models x 3 engines x TP 2
    assert p.stage_needs("sft")[1] == 8.0
    assert p.stage_needs("embeddings") == (1.0 + 3, 3.0)  # one GPU per embedder actor, no tensor parallel
    assert p.gpus_needed == 12.0  # kept engines give their GPUs back before training


def test_the_judge_build_and_its_evaluation_app_are_planned() -> None:
    p = plan(load_config(TINY, ["judge.build={distill_pairs: 4}", "resources.judge_engines=2"]))
    assert [s for s in p.stages if s.startswith(("judge", "distill"))] == [
        "judge_sft", "distill_pairs", "distill_scores", "judge_distill", "judge_eval"]
    assert p.stage_needs("judge_eval") == (1.0 + 3 * 2, 0.0)  # base, sft and distilled judges, 2 replicas each
    assert "judge build: annotations -> judge_sft -> distill_pairs" in p.describe()


def test_the_mix_of_each_round_names_the_checkpoints_that_have_a_model() -> None:
    config = load_config(TINY, ["train.round_one_seeds=2", "generation.n=6", "rounds=4",
                                "generation.checkpoints=[{name: m1a, model: 'round_one:0'}, "
                                "{name: m1b, model: 'round_one:1'}, {name: new, model: latest}, "
                                "{name: tiny, model: 'embedded:tiny-llama'}]"])
    assert mix_line(config, 1) == "tiny x6"
    assert mix_line(config, 2) == "m1a x2, m1b x2, new x1, tiny x1"
    assert "rounds 2-4" in plan(config).describe() and "sft (x2 seeds: M1a, M1b)" in plan(config).describe()
