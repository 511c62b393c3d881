"""A tiny random Llama with a locally trained byte-level BPE tokenizer: the model of the tests and `tiny` preset.

Built in seconds from text shipped with the package, so the whole pipeline (vLLM, the judge, DeepSpeed) runs on
real code paths without a model hub. Its outputs are gibberish by design; only the mechanics are under test.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    from alma_ray.seeds import TINY_SEEDS_PATH

    lines = [json.loads(line)["prompt"] for line in TINY_SEEDS_PATH.read_text().splitlines() if line.strip()]
    # The judge reads digits after "Rating: [[": they must be tokens of their own.
    lines += [" ".join(str(i) for i in range(11)) + " Rating: [["] * 4
    lines += ["\n".join(lines[i : i + 3]) for i in range(0, 30, 3)]  # newlines belong to the alphabet
    return lines


def build_tiny_llama(out_dir: Path, *, vocab_size: int = 1024, hidden_size: int = 128, layers: int = 2,
                     seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer (with a ChatML chat template) to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Metaspace BPE over the corpus alphabet (not byte-level): any token sequence decodes to valid text, so
    # the random model's samples look like (nonsense) words rather than broken UTF-8.
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, head_dim=hidden_size // 2,
        max_position_embeddings=4096, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=False, dtype="float32",
    )
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir
