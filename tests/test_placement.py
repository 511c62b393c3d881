"""The placement primitives: what an engine or training pool reserves on CPU and GPU, and what a plan needs."""

from pathlib import Path

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.placement import Plan, engine_pool, train_pool


def test_engine_pools_reserve_cpus_on_cpu_and_gpus_on_gpu() -> None:
    cpu = ResourcesConfig(cpus_per_engine=2)
    assert engine_pool("s", "e", 3, engine=EngineConfig(), resources=cpu).cpus == 6.0
    gpu = ResourcesConfig(use_gpu=True)
    pool = engine_pool("s", "e", 3, engine=EngineConfig(tensor_parallel_size=2), resources=gpu)
    assert (pool.cpus, pool.gpus) == (3.0, 6.0)
    assert train_pool("t", "w", ResourcesConfig(use_gpu=True, train_workers=4)).gpus == 4.0


def test_a_plan_needs_its_largest_stage_plus_the_data_tasks() -> None:
    res = ResourcesConfig()
    p = Plan("x", (engine_pool("a", "e", 2, engine=EngineConfig(), resources=res), train_pool("b", "w", res)),
             steps=(("round 1", "a -> b"),))
    assert p.stages == ["a", "b"] and p.cpus_needed == 3.0 and p.gpus_needed == 0.0
    assert "round 1      a -> b" in p.describe()


def test_training_memory_is_estimated_from_the_model_folder(tmp_path: Path) -> None:
    from alma_ray.config import TrainConfig
    from alma_ray.placement import GiB, training_bytes

    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16", "text_config": {"vocab_size": 1000}}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)  # 500 bf16 weights: 2,000 bytes in fp32
    train = TrainConfig(micro_batch=2, max_seq_len=16)
    per_worker = 4 * 2000 + 3 * 2 * 16 * 1000 * 4 + GiB
    assert training_bytes(str(tmp_path), train, workers=2) == 2 * per_worker
    assert training_bytes("org/not-a-folder", train, workers=2) == 0  # unknown: no memory check
    # the judge's loss reads 2 positions a row, not 16; layers x hidden add the saved activations
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16", "text_config": {"vocab_size": 1000, '
                                          '"num_hidden_layers": 3, "hidden_size": 8}}')
    per_worker = 4 * 2000 + 3 * 2 * 2 * 1000 * 4 + 32 * (2 * 16) * 3 * 8 * 4 + GiB
    assert training_bytes(str(tmp_path), train, workers=2, logit_positions=2) == 2 * per_worker


def test_engine_memory_counts_weights_kv_cache_process_and_vocabulary(tmp_path: Path) -> None:
    """Measured on CPU (``engine_bytes``' docstring): Gemma-3-270M's engine holds 5.09 GiB, 2 GiB of it beyond
    weights, KV cache and process, in proportion to its 262k x 640 embedding matrix."""
    import json

    from alma_ray.placement import GiB, engine_bytes

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "vocab_size": 1000,
                                                      "hidden_size": 8}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)  # 500 bf16 weights
    fp32 = EngineConfig(dtype="float32", kv_cache_gb=2.0)
    assert engine_bytes(str(tmp_path), fp32) == 2000 + 2 * GiB + GiB + int(3.5 * 1000 * 8 * 4)
    assert engine_bytes(str(tmp_path), EngineConfig(dtype="bfloat16", kv_cache_gb=0.5)) == (
        1000 + GiB + GiB + int(3.5 * 1000 * 8 * 2))  # the KV cache counts at least 1 GiB
    assert engine_bytes("org/not-a-folder", fp32) == 0
