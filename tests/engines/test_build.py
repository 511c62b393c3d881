"""What an engine sees: chat template or plain completion template, special tokens, and the engine environment."""

from __future__ import annotations

import pytest

from alma_ray.config import EngineConfig
from alma_ray.engines.build import actor_remote_args, engine_env, format_prompt, prompt_ids, uses_chat_template


def test_chat_or_plain_completion_prompts(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    template = "User: {prompt}\nAssistant:"
    assert uses_chat_template(tok, None) and not uses_chat_template(tok, False)  # None: the tokenizer decides
    chat = format_prompt(tok, "say rain", chat=True, completion_template=template)
    assert "say rain" in chat and chat != "say rain"
    assert prompt_ids(tok, "say rain", chat=True, completion_template=template) == tok.encode(
        chat, add_special_tokens=False)  # the chat template carries its own special tokens
    plain = format_prompt(tok, "say rain", chat=False, completion_template=template)
    assert plain == "User: say rain\nAssistant:"
    assert prompt_ids(tok, "say rain", chat=False, completion_template=template) == tok.encode(
        plain, add_special_tokens=True)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        uses_chat_template(tok, True)


def test_cpu_engines_run_in_process_on_their_own_threads() -> None:
    env = engine_env(EngineConfig(kv_cache_gb=2.4), use_gpu=False, cpus=3)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "3"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert "VLLM_TARGET_DEVICE" not in engine_env(EngineConfig(), use_gpu=True, cpus=1)
    gpu = actor_remote_args(EngineConfig(tensor_parallel_size=2), use_gpu=True, cpus=4)
    assert (gpu["num_gpus"], gpu["num_cpus"]) == (2, 1)
