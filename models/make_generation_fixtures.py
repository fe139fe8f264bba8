"""Generate the text-generation fixtures: one tiny seeded decoder-only model per architecture we
serve, and the golden answers of the `transformers` text-generation pipeline (as the DLC calls
it) to a set of requests. Run with transformers < 5 (the DLC pins 4.51.3) and torch:

    ~/.cache/dlc-peer/venv/bin/python models/make_generation_fixtures.py [FAMILY ...]

Writes models/tiny/<family>-lm/ and models/golden/text-generation/<family>-lm.json. Greedy only
(sampled text cannot match across implementations); `do_sample` with `top_k: 1` is greedy too.
"""
import os
import sys

import torch
from tokenizers import processors
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import TINY, byte_bpe, golden, save  # noqa: E402

COMMON = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, initializer_range=0.1, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def tokenizer(add_bos):
    """Byte-level BPE (GPT-2 style); Llama-style models put <s> in front of every prompt."""
    tok = byte_bpe()
    tok.post_processor = (processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
                          if add_bos else processors.ByteLevel(trim_offsets=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"],
                                   clean_up_tokenization_spaces=False)


FAMILIES = {
    "gpt2": lambda: (GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                initializer_range=0.1, bos_token_id=0, eos_token_id=2)),
                     tokenizer(add_bos=False)),
    "llama": lambda: (LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, rope_theta=10000.0, **COMMON)),
                      tokenizer(add_bos=True)),
    "mistral": lambda: (MistralForCausalLM(MistralConfig(num_key_value_heads=1, sliding_window=64, **COMMON)),
                        tokenizer(add_bos=True)),
    "qwen2": lambda: (Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **COMMON)),
                      tokenizer(add_bos=False)),
    "qwen3": lambda: (Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                                                   **COMMON)),
                      tokenizer(add_bos=False)),
}

CASES = [
    {"inputs": "I love this", "parameters": {"max_new_tokens": 10}},
    {"inputs": "the movie was"},  # generation_config's max_length (20) counts the prompt
    {"inputs": ["I love this", "the food was great but the service was slow"], "parameters": {"max_new_tokens": 6}},
    {"inputs": "hello", "parameters": {"max_new_tokens": 5, "return_full_text": False}},
    {"inputs": "it is good", "parameters": {"max_length": 12}},
    {"inputs": "it is good", "parameters": {"max_new_tokens": 12, "repetition_penalty": 1.5}},
    {"inputs": "i love", "parameters": {"do_sample": True, "top_k": 1, "max_new_tokens": 5}},
    {"inputs": "J’adore ça 😀", "parameters": {"max_new_tokens": 6}},
    {"inputs": "a long story about nothing in particular " * 3, "parameters": {"max_new_tokens": 16}},
    {"inputs": 5},
    {"inputs": "x", "parameters": {"num_return_sequences": 2}},
]


def main():
    only = sys.argv[1:] or list(FAMILIES)
    for i, family in enumerate(only):
        torch.manual_seed(200 + 7 * list(FAMILIES).index(family))
        model, fast = FAMILIES[family]()
        out = save(f"{family}-lm", model, fast)
        golden("text-generation", f"{family}-lm", out, CASES)


if __name__ == "__main__":
    main()
