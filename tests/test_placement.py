from pathlib import Path

from alma_ray.config import load_config
from alma_ray.placement import plan_resources

TINY = Path(__file__).parent.parent / "jobs" / "configs" / "tiny.yaml"


def test_cpu_plan_fits_the_largest_stage() -> None:
    plan = plan_resources(load_config(TINY))
    # two checkpoints -> two 1-CPU engine pools at once, plus a CPU for Ray Data tasks
    assert plan.stage_needs("generate") == (3.0, 0.0)
    assert plan.stage_needs("train") == (3.0, 0.0)
    assert plan.cpus_needed == 3.0 and plan.gpus_needed == 0.0
    assert "checkpoint:tiny-a" in plan.describe()


def test_gpu_plan_gives_each_engine_its_gpus() -> None:
    config = load_config(TINY, ["resources.use_gpu=true", "engine.tensor_parallel_size=2",
                                "resources.engines_per_checkpoint=3", "resources.train_workers=8"])
    plan = plan_resources(config)
    assert plan.stage_needs("generate") == (1.0 + 6, 12.0)  # 2 checkpoints x 3 engines x TP 2
    assert plan.stage_needs("train")[1] == 8.0
    assert plan.stage_needs("embeddings") == (1.0 + 3, 3.0)  # one GPU per embedder actor, no tensor parallel
    assert plan.gpus_needed == 12.0
