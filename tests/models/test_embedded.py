"""The embedded real models: converted from the GGUF files inside PyPI packages, loaded by vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alma_ray.models.gguf import verify
from alma_ray.models.registry import ModelError, prepare_embedded, resolve_model

pytestmark = pytest.mark.slow


def test_prepare_both_and_generate_with_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    from alma_ray.config import EngineConfig
    from alma_ray.engines.build import build_llm

    parsed: list[str] = []
    reader = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a: parsed.append(str(path)) or reader(path, *a))
    gemma = prepare_embedded("gemma3-270m")
    assert len(parsed) == 1, parsed  # config, tokenizer and weights share one parse of the file (about 9 s each)
    assert json.loads((gemma / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    verify(gemma)
    smol = prepare_embedded("smollm2-135m-instruct")
    ids = verify(smol)
    assert ids["10"] == ids["1"] + ids["0"]  # the judge's two-position "10" is needed here

    from vllm import SamplingParams

    llm = build_llm(str(smol), EngineConfig(max_model_len=512, dtype="float32"), use_gpu=False)
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text


def test_unknown_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown embedded model"):
        resolve_model("embedded:nope")
    with pytest.raises(ModelError, match="unknown embedded model 'embedded:nope'; known: tiny-llama"):
        prepare_embedded("embedded:nope")  # as `alma-ray models list` prints names: the prefix is taken off
    assert prepare_embedded("embedded:tiny-llama") == prepare_embedded("tiny-llama")
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_two_first_uses_at_once_leave_one_complete_model(tmp_path: Path) -> None:
    """Two processes prepare the same model into an empty cache at the same time: one builds it, the other waits
    for it and uses it; neither deletes the other's folder."""
    import os
    import subprocess
    import sys

    code = ("from alma_ray.models.registry import prepare_embedded; "
            "print(prepare_embedded('tiny-llama'), flush=True)")
    env = {**os.environ, "ALMA_RAY_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    folder = tmp_path / "models" / "tiny-llama"
    assert {out.strip() for out, _ in outs} == {str(folder)}
    assert (folder / ".complete").exists() and (folder / "config.json").exists()
    assert not list((tmp_path / "models").glob(".tiny-llama.tmp-*"))
