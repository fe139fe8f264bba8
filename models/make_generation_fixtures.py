"""Generate the text-generation fixtures: one tiny seeded decoder-only model per architecture we
serve, and the golden answers of the `transformers` text-generation pipeline (as the DLC calls
it) to a set of requests. Run with transformers < 5 (the DLC pins 4.51.3) and torch:

    ~/.cache/dlc-peer/venv/bin/python models/make_generation_fixtures.py [FAMILY ...]

Writes models/tiny/<family>-lm/ and models/golden/text-generation/<family>-lm.json. Greedy only
(sampled text cannot match across implementations); `do_sample` with `top_k: 1` is greedy too.

`t5`: T5 for text2text-generation, summarization and translation; `seq2seq`: BART (as
bart-large-cnn: beams, forced first and last tokens) and Marian (as opus-mt) on tiny models.

`smollm2` (needs models/fetch_models.sh and `pip install gguf`): the real SmolLM2-135M-Instruct
GGUF, dequantized by transformers' own GGUF loader, answering text and chat prompts, plus the
top-10 next-token logits of a few prompts (models/golden/text-generation/smollm2-next-token.json).

`smollm2-quants` (needs models/make_gguf_quants.py's files and `pip install gguf`): for SmolLM2 in
each GGUF quantization (the Q4_1 file and models/smollm2-quants/*), transformers' own GGUF loader
(weights dequantized to f32) continues a set of prompts greedily and records, at every position of
prompt + continuation, its top-1 next token and top-1/top-2 margin: what tests/parity_gguf_quants.rs
compares our quantized kernels' choices with (models/golden/text-generation/smollm2-quants.json).

`params`: no model is made; the committed gpt2-lm, llama-lm, t5-lm and t5-tasks answer requests with
the other generation parameters a client can send (return_tensors, prefix, stop_sequence, logits
processors, group beam and contrastive search, the ones that need Python objects, ...):
models/golden/<task>/<model>-params.json, and a table of what succeeded and what raised.
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          T5Config, T5ForConditionalGeneration, BartConfig, BartForConditionalGeneration,
                          MarianConfig, MarianMTModel)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CORPUS, GOLDEN, TINY, byte_bpe, golden, save  # noqa: E402

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
    "phi3": lambda: (Phi3ForCausalLM(Phi3Config(num_key_value_heads=2, original_max_position_embeddings=64,
                                                 **COMMON)),
                     tokenizer(add_bos=True)),
    "gemma": lambda: (GemmaForCausalLM(GemmaConfig(num_key_value_heads=1, head_dim=8,
                                                   hidden_act="gelu_pytorch_tanh", **COMMON)),
                      tokenizer(add_bos=True)),
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
] + [
    # Beam search (transformers' _beam_search); eos_token_id lists make hypotheses end early.
    {"inputs": "I love this", "parameters": {"num_beams": 3, "max_new_tokens": 8}},
    {"inputs": "the movie was", "parameters": {"num_beams": 4, "num_return_sequences": 3, "max_new_tokens": 10,
                                               "length_penalty": 0.5}},
    {"inputs": ["hello", "it is good"], "parameters": {"num_beams": 2, "max_new_tokens": 6}},
    {"inputs": "a long story", "parameters": {"num_beams": 3, "max_new_tokens": 12, "no_repeat_ngram_size": 2,
                                              "repetition_penalty": 1.3}},
] + [
    {"inputs": "the food was", "parameters": {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 12,
                                              "eos_token_id": list(range(20, 60)), "early_stopping": stopping,
                                              "length_penalty": penalty}}
    for stopping, penalty in [(False, 1.0), (True, 1.0), ("never", 2.0), (False, -1.0)]
] + [
    {"inputs": "x", "parameters": {"num_beams": 2, "num_return_sequences": 3}},
]


def t5_tokenizer():
    """T5-style: SentencePiece Unigram, <pad> 0, </s> 1, <unk> 2, </s> after every input."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS + ["summarize: translate English to German: Das ist gut."],
                            trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                    unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_input_names=["input_ids", "attention_mask"])


T5_COMMON = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16, initializer_factor=1.0,
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# The summarization entry as the real T5 checkpoints carry it (4 beams, early stopping), shorter.
T5_TASKS = {"summarization": {"prefix": "summarize: ", "max_length": 24, "min_length": 6, "no_repeat_ngram_size": 3,
                              "num_beams": 4, "length_penalty": 2.0, "early_stopping": True},
            "translation_en_to_de": {"prefix": "translate English to German: ", "max_length": 12}}
TEXT2TEXT_CASES = [
    {"inputs": "I love this movie"},  # the default: 20 new tokens
    {"inputs": ["the food was great", "the service was slow"], "parameters": {"max_new_tokens": 8}},
    {"inputs": "it is good", "parameters": {"max_length": 10}},
    {"inputs": "it is good", "parameters": {"min_length": 12, "max_new_tokens": 16}},
    {"inputs": "a long story about nothing", "parameters": {"max_new_tokens": 16, "no_repeat_ngram_size": 2}},
    {"inputs": "a long story about nothing", "parameters": {"max_new_tokens": 16, "repetition_penalty": 1.4}},
    {"inputs": "J’adore ça", "parameters": {"max_new_tokens": 6}},
    {"inputs": 5},
    {"inputs": "x", "parameters": {"num_return_sequences": 2}},
    {"inputs": "I love this movie", "parameters": {"num_beams": 3, "max_new_tokens": 10}},
    {"inputs": ["the food was great", "it is good"],
     "parameters": {"num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 12, "length_penalty": 0.6}},
] + [
    {"inputs": "the service was slow", "parameters": {"num_beams": 3, "max_new_tokens": 12, "min_length": 4,
                                                      "eos_token_id": list(range(1, 40)),
                                                      "early_stopping": stopping}}
    for stopping in [False, True, "never"]
]
TASK_CASES = [
    {"inputs": "the movie was great but the food was cold and the service was slow"},
    {"inputs": ["I love this", "it is good"]},
    {"inputs": "I love this", "parameters": {"max_length": 8}},
    {"inputs": "I love this", "parameters": {"num_beams": 1}},
]


def t5():
    torch.manual_seed(300)
    out = save("t5-lm", T5ForConditionalGeneration(T5Config(**T5_COMMON)), t5_tokenizer())
    golden("text2text-generation", "t5-lm", out, TEXT2TEXT_CASES)
    torch.manual_seed(301)
    out = save("t5-tasks", T5ForConditionalGeneration(T5Config(task_specific_params=T5_TASKS, **T5_COMMON)),
               t5_tokenizer())
    golden("summarization", "t5-tasks", out, TASK_CASES)
    golden("translation_en_to_de", "t5-tasks", out, TASK_CASES)
    # Flan-T5 / T5 v1.1: gated-GELU feed-forward, an output layer of its own (no 1/sqrt(d) scale).
    torch.manual_seed(302)
    out = save("flan-t5-lm", T5ForConditionalGeneration(T5Config(feed_forward_proj="gated-gelu",
                                                                 tie_word_embeddings=False, **T5_COMMON)),
               t5_tokenizer())
    golden("text2text-generation", "flan-t5-lm", out, TEXT2TEXT_CASES)


SEQ2SEQ_COMMON = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                      init_std=0.1)
# bart-large-cnn's generation settings (beams, lengths, forced <s> first and </s> last), shorter.
BART_GENERATION = dict(num_beams=4, length_penalty=2.0, max_length=20, min_length=6, no_repeat_ngram_size=3,
                       early_stopping=True, forced_bos_token_id=0, forced_eos_token_id=2)
SEQ2SEQ_CASES = [
    {"inputs": "the movie was great but the food was cold and the service was slow"},
    {"inputs": ["I love this", "it is good"]},
    {"inputs": "I love this", "parameters": {"num_beams": 1, "max_new_tokens": 10}},
    {"inputs": "the food was great", "parameters": {"num_beams": 3, "num_return_sequences": 2, "max_length": 12,
                                                    "length_penalty": 1.0, "early_stopping": "never"}},
    {"inputs": "it is good", "parameters": {"do_sample": True, "top_k": 1, "num_beams": 1, "max_new_tokens": 8}},
    {"inputs": "a long story about nothing " * 12},  # past the 64 positions: refused
    {"inputs": "a long story about nothing " * 12, "parameters": {"truncation": True, "max_new_tokens": 6}},
]


def marian_tokenizer():
    """Marian-style: SentencePiece Unigram, </s> 0, <unk> 1, <pad> 2, </s> after every input."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=["</s>", "<unk>", "<pad>"],
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=64, model_input_names=["input_ids", "attention_mask"])


def seq2seq():
    """BART (summarization, as bart-large-cnn) and Marian (translation, as opus-mt) on tiny models."""
    from make_fixtures import byte_bpe
    torch.manual_seed(400)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=400, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                                                   decoder_start_token_id=2, **SEQ2SEQ_COMMON, **BART_GENERATION))
    with torch.no_grad():
        bart.final_logits_bias.normal_(0.0, 1.0)
    fast = PreTrainedTokenizerFast(tokenizer_object=byte_bpe(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=64,
                                   model_input_names=["input_ids", "attention_mask"])
    out = save("bart-lm", bart, fast)
    golden("summarization", "bart-lm", out, SEQ2SEQ_CASES)
    golden("text2text-generation", "bart-lm", out, TEXT2TEXT_CASES)
    torch.manual_seed(401)
    marian_fast = marian_tokenizer()
    marian = MarianMTModel(MarianConfig(vocab_size=len(marian_fast), pad_token_id=2, eos_token_id=0, decoder_start_token_id=2,
                                        forced_eos_token_id=0, bad_words_ids=[[2]], activation_function="swish",
                                        scale_embedding=True, num_beams=3, max_length=24, **SEQ2SEQ_COMMON))
    with torch.no_grad():
        marian.final_logits_bias.normal_(0.0, 1.0)
    out = save("marian-lm", marian, marian_fast)
    golden("translation", "marian-lm", out, SEQ2SEQ_CASES)


MARIAN_SPM_CASES = SEQ2SEQ_CASES[:5] + [
    {"inputs": "  the  food   was great  "},
    {"inputs": "Ça va très bien, merci ! J’adore ça 😀 ½ Ｆｕｌｌ"},
    {"inputs": ["I love this!", "It is 42 degrees", "tab\tand\nnewline"]},
]
TOKENIZATION_TEXTS = ["I love this", "  the  food   was great  ", "Ça va très bien, merci !", "J’adore ça 😀",
                      "½ Ｆｕｌｌ ﬁ", "It is 42 degrees", "tab\tand\nnewline", "unseenword xyzzy", ""]


def marian_spm():
    """A Marian tokenizer as opus-mt ships it: SentencePiece models (source.spm / target.spm) and a
    vocab.json, no tokenizer.json. The server builds its own; its ids must be MarianTokenizer's."""
    import tempfile
    import sentencepiece as spm
    from transformers import MarianTokenizer
    work = tempfile.mkdtemp()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=os.path.join(work, "m"),
                                   vocab_size=300, model_type="unigram", eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
                                   hard_vocab_limit=False, character_coverage=0.9995)
    pieces = [line.split("\t")[0] for line in open(os.path.join(work, "m.vocab"), encoding="utf-8")]
    vocab = {p: i for i, p in enumerate(pieces)}
    vocab["<pad>"] = len(vocab)
    with open(os.path.join(work, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    model_file = os.path.join(work, "m.model")
    tok = MarianTokenizer(source_spm=model_file, target_spm=model_file, vocab=os.path.join(work, "vocab.json"),
                          model_max_length=64)
    torch.manual_seed(402)
    pad = vocab["<pad>"]
    marian = MarianMTModel(MarianConfig(vocab_size=len(vocab), pad_token_id=pad, eos_token_id=0,
                                        decoder_start_token_id=pad, forced_eos_token_id=0, bad_words_ids=[[pad]],
                                        activation_function="swish", scale_embedding=True, num_beams=3, max_length=16,
                                        **SEQ2SEQ_COMMON))
    with torch.no_grad():
        marian.final_logits_bias.normal_(0.0, 1.0)
    out = save("marian-spm", marian, tok)
    assert not os.path.exists(os.path.join(out, "tokenizer.json"))
    golden("translation", "marian-spm", out, MARIAN_SPM_CASES)
    tok = MarianTokenizer.from_pretrained(out)
    records = [{"text": t, "input_ids": tok(t)["input_ids"]} for t in TOKENIZATION_TEXTS]
    path = os.path.join(GOLDEN, "translation", "marian-spm-tokens.json")
    with open(path, "w") as f:
        json.dump({"model": "models/tiny/marian-spm", "records": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path)


SMOLLM2 = os.path.join(os.path.dirname(TINY), "smollm2-135m-instruct")
SMOLLM2_CASES = [
    {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}},
    {"inputs": [{"role": "user", "content": "What is the capital of France?"}], "parameters": {"max_new_tokens": 20}},
    {"inputs": [{"role": "user", "content": "Name three colours."}],
     "parameters": {"max_new_tokens": 24, "return_full_text": False}},
    {"inputs": ["Once upon a time", "def fibonacci(n):"], "parameters": {"max_new_tokens": 16}},
    {"inputs": "The weather today is", "parameters": {"max_new_tokens": 16, "repetition_penalty": 1.3}},
    {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 12, "num_beams": 4,
                                                          "num_return_sequences": 2}},
    {"inputs": [{"role": "user", "content": "What is the capital of France?"}],
     "parameters": {"max_new_tokens": 24, "num_beams": 3, "return_full_text": False}},
]
NEXT_TOKEN_PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Hello, my name is"]


def smollm2():
    from transformers import AutoModelForCausalLM, pipeline
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, gguf_file=gguf, torch_dtype=torch.float32).eval()
    # Its tokenizer_config.json is transformers 5's (tokenizer_class TokenizersBackend).
    config = json.load(open(os.path.join(SMOLLM2, "tokenizer_config.json")))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(SMOLLM2, "tokenizer.json"),
                                  **{k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                                     if k in config},
                                  clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False))
    tok.chat_template = open(os.path.join(SMOLLM2, "chat_template.jinja")).read()
    pipe = pipeline("text-generation", model=model, tokenizer=tok, device=-1)
    from make_fixtures import dlc_predict, golden_records, to_json, GOLDEN
    golden_records("text-generation", "smollm2-135m-instruct", SMOLLM2, SMOLLM2_CASES,
                   lambda body: to_json(dlc_predict(pipe, body)))
    records = []
    for prompt in NEXT_TOKEN_PROMPTS:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 10)
        records.append({"prompt": prompt, "input_ids": ids, "top_ids": top.indices.tolist(),
                        "top_logits": top.values.tolist()})
    path = os.path.join(GOLDEN, "text-generation", "smollm2-next-token.json")
    with open(path, "w") as f:
        json.dump({"model": "smollm2-135m-instruct", "gguf": gguf, "records": records}, f, indent=1)
        f.write("\n")
    print("wrote", path)


QUANT_PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
                 "The three most important things in life are", "Water boils at a temperature of",
                 "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"]
QUANT_NEW_TOKENS = 24


def smollm2_quants():
    import hashlib
    from transformers import AutoModelForCausalLM
    tok = Tokenizer.from_file(os.path.join(SMOLLM2, "tokenizer.json"))
    quants = os.path.join(os.path.dirname(TINY), "smollm2-quants")
    files = [("Q4_1", SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")]
    for kind in sorted(os.listdir(quants)):
        files.append((kind, os.path.join(quants, kind), f"SmolLM2-135M-Instruct.{kind}.gguf"))
    out = {"model": "smollm2-135m-instruct", "new_tokens": QUANT_NEW_TOKENS, "files": []}
    for kind, folder, name in files:
        path = os.path.join(folder, name)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
        records = []
        for prompt in QUANT_PROMPTS:
            ids = tok.encode(prompt, add_special_tokens=False).ids
            with torch.no_grad():
                full = model.generate(torch.tensor([ids]), max_new_tokens=QUANT_NEW_TOKENS, do_sample=False,
                                      eos_token_id=None, pad_token_id=2)[0].tolist()
                logits = model(torch.tensor([full])).logits[0]
            top = torch.topk(logits[len(ids) - 1:], 2)
            records.append({"prompt": prompt, "input_ids": full, "prompt_len": len(ids),
                            "top1": top.indices[:, 0].tolist(),
                            "margin": (top.values[:, 0] - top.values[:, 1]).tolist()})
        out["files"].append({"type": kind, "dir": os.path.relpath(folder, os.path.dirname(TINY)), "file": name,
                             "sha256": digest, "records": records})
        print(kind, digest, flush=True)
    path = os.path.join(GOLDEN, "text-generation", "smollm2-quants.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", path)


# ---------------------------------------------------------------------------------------------
# `params`: the generation parameters a client can send, answered by the pipelines on the committed
# tiny models (nothing is regenerated): models/golden/<task>/<model>-params.json. Greedy only; the
# token ids the requests name (suppressed, biased, stop tokens) come from a greedy run first, and are
# checked, so the files say what they mean.

def dlc_json(value):
    """The response as the DLC writes it (decoder_encoder.encode_json: numpy scalars to int/float,
    anything with `.tolist()` to a list), read back. make_fixtures.to_json calls `.item()`, which
    fails on the 1-D tensors that text2text's `return_tensors` returns."""
    try:
        from sagemaker_huggingface_inference_toolkit.decoder_encoder import encode_json
    except ImportError:  # the same encoder, for a venv without the toolkit
        import numpy as np

        class Encoder(json.JSONEncoder):
            def default(self, obj):
                if isinstance(obj, np.integer):
                    return int(obj)
                if isinstance(obj, np.floating):
                    return float(obj)
                if hasattr(obj, "tolist"):
                    return obj.tolist()
                return super().default(obj)

        def encode_json(content):
            return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, cls=Encoder,
                              separators=(",", ":"))
    return json.loads(encode_json(value))


# Parameters the pipeline runs and the server refuses on purpose (a 400 that names them), with why.
NOT_SERVED = {
    "encoder_repetition_penalty": "not served: a 400 that names the parameter",
    "encoder_no_repeat_ngram_size": "not served: a 400 that names the parameter",
    "num_beam_groups": "group beam search is not served: a 400",
    "penalty_alpha": "contrastive search is not served: a 400",
    "force_words_ids": "constrained beam search is not served: a 400",
    "handle_long_generation": "not served: a 400",
    "negative_prompt_ids": "takes a tensor: a 400 (the pipeline ignores it without guidance_scale)",
    "decoder_start_token_id": "not a request parameter here: a 400",
}


def params_golden(task, model, cases):
    """Like make_fixtures.golden (one pipeline per file, each request as the DLC handler calls it), with
    the DLC's encoder; then the outcome of each request."""
    from transformers import pipeline
    from make_fixtures import dlc_predict, golden_records
    model_dir = os.path.join(TINY, model)
    pipe = pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)
    golden_records(task, f"{model}-params", model_dir, cases, lambda body: dlc_json(dlc_predict(pipe, body)),
                   {i: why for i, body in enumerate(cases)
                    for name, why in NOT_SERVED.items() if name in body.get("parameters", {})})
    with open(os.path.join(GOLDEN, task, f"{model}-params.json")) as f:
        records = json.load(f)["records"]
    return [(f"{task}/{model}-params", i, r["request"],
             "raised: " + r["error"].strip().splitlines()[0] if "error" in r else "ok") for i, r in enumerate(records)]


def probe(task, model):
    """A pipeline of its own for finding token ids (the goldens' pipeline only answers the requests)."""
    from transformers import pipeline
    model_dir = os.path.join(TINY, model)
    return pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)


# Per family: a stop string whose first token (alone) the greedy continuation of LM_PROMPT has, after
# its first token; an eos_token_id the exponential decay penalty makes win before max_new_tokens.
LM_PARAMS = {"gpt2": dict(stop="fulzz", decay_eos=69), "llama": dict(stop="ulzz", decay_eos=63)}
LM_PROMPT = "I love this"
SPACED = "hello , world . it is"  # decodes with spaces before punctuation
PREFIX = "the food was "
# Parameters that need Python objects, sent as JSON values a client might try.
OBJECT_PARAMS = [
    {"assistant_model": "distilgpt2"},
    {"logits_processor": [{"type": "TemperatureLogitsWarper", "temperature": 0.5}]},
    {"stopping_criteria": [{"type": "MaxLengthCriteria", "max_length": 8}]},
    {"prefix_allowed_tokens_fn": "lambda batch_id, input_ids: [45]"},
    {"streamer": "TextStreamer"},
    {"generation_config": {"max_new_tokens": 4, "do_sample": False}},
    {"negative_prompt_ids": [[88, 76, 73]]},
    {"negative_prompt_ids": [[88, 76, 73]], "guidance_scale": 1.5},
    {"stop_strings": ["."]},
    {"constraints": [[388]]},  # refused for num_beams 1 before its type is looked at
    {"constraints": [[388]], "num_beams": 2},
    {"compile_config": {"fullgraph": True}},
    {"forced_decoder_ids": [[1, 388]]},
    {"token_healing": True},
]


def lm_params_cases(family):
    pipe = probe("text-generation", f"{family}-lm")
    tok = pipe.tokenizer
    n = len(tok(LM_PROMPT)["input_ids"])
    new = pipe(LM_PROMPT, max_new_tokens=6, return_tensors=True)[0]["generated_token_ids"][n:]
    stop, decay_eos = LM_PARAMS[family]["stop"], LM_PARAMS[family]["decay_eos"]
    first_stop = tok.encode(stop, add_special_tokens=False)[0]
    assert first_stop in new[1:] and new[0] != first_stop, (stop, new)
    assert not set(tok.encode("xyz", add_special_tokens=False)) & set(new), new
    assert new[0] != new[1] and decay_eos not in new, new
    dot = tok.convert_tokens_to_ids(".")
    good = tok.encode(" good", add_special_tokens=False)
    assert len(good) == 1 and good[0] not in new
    with_prefix = len(tok(PREFIX + LM_PROMPT)["input_ids"])

    def req(params, inputs=LM_PROMPT, max_new_tokens=6):
        return {"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens, **params}}

    greedy_sampling = {"do_sample": True, "top_k": 1}
    return [
        req({"return_tensors": True}),
        req({"return_tensors": True}, inputs=[LM_PROMPT, "the food was great"], max_new_tokens=4),
        req({"return_tensors": False}),  # any non-null return_tensors: token ids
        req({"return_text": False}),  # no effect
        req({"return_text": True, "return_full_text": False}),  # mutually exclusive
        req({"clean_up_tokenization_spaces": False}, inputs=SPACED, max_new_tokens=4),
        req({"clean_up_tokenization_spaces": True}, inputs=SPACED, max_new_tokens=4),
        req({"clean_up_tokenization_spaces": True, "return_full_text": False}, inputs=SPACED, max_new_tokens=4),
        # "." forced after a prompt that ends in a space: " ." straddles the prompt's end, and the
        # clean-up (on by default) shortens the text but not the decoded prompt, so one "." is lost.
        req({"sequence_bias": [[[dot], 20.0]]}, inputs="it is ", max_new_tokens=4),
        req({"sequence_bias": [[[dot], 20.0]], "clean_up_tokenization_spaces": False}, inputs="it is ",
            max_new_tokens=4),
        req({"sequence_bias": [[[dot], 20.0]], "return_full_text": False}, inputs="it is ", max_new_tokens=4),
        req({"prefix": PREFIX}, max_new_tokens=4),
        # Without max_new_tokens, max_length grows by the prefix's tokens (counted without special
        # tokens); max_length also reaches the tokenizer, so it is the prefixed prompt's length here.
        {"inputs": LM_PROMPT, "parameters": {"prefix": PREFIX, "max_length": with_prefix}},
        req({"prefix": PREFIX, "return_full_text": False}, max_new_tokens=4),
        req({"add_special_tokens": False}),
        req({"add_special_tokens": True}),
        req({"stop_sequence": stop}),  # stops at its first token, alone
        req({"stop_sequence": "xyz"}),  # none of its tokens come
        req({"suppress_tokens": new[:2]}),
        req({"begin_suppress_tokens": new[:1]}),
        req({"sequence_bias": [[new[:1], -100.0]]}),
        req({"min_p": 0.5, **greedy_sampling}),
        req({"typical_p": 0.5, **greedy_sampling}),
        req({"epsilon_cutoff": 0.0003, **greedy_sampling}),
        req({"eta_cutoff": 0.0003, **greedy_sampling}),
        req({"exponential_decay_length_penalty": [2, 1.5]}),  # the model's eos (2) never comes close
        req({"exponential_decay_length_penalty": [2, 1.5], "eos_token_id": decay_eos}),
        req({"renormalize_logits": True}),
        req({"encoder_repetition_penalty": 1.5}, inputs=SPACED),  # decoder-only: rewards the prompt's tokens
        req({"max_time": 30}),
        req({"use_cache": False}),
        req({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}),
        req({"penalty_alpha": 0.6, "top_k": 4}),
        req({"force_words_ids": [good], "num_beams": 2}),
        req({"handle_long_generation": "hole"}),
    ] + [req(params) for params in OBJECT_PARAMS] + [
        req({"return_type": 1}),
    ]


T5_PROMPT = "I love this movie"
T5_VARIED = "friendly cold boring never recommend second sentence in me"  # two different ids come


def t5_params_cases():
    pipe = probe("text2text-generation", "t5-lm")
    tok = pipe.tokenizer
    new = pipe(T5_VARIED, max_new_tokens=6, return_tensors=True)[0]["generated_token_ids"].tolist()[1:]
    distinct = list(dict.fromkeys(new))
    assert len(distinct) >= 2, new
    good = tok.encode("good", add_special_tokens=False)
    assert len(good) == 1 and good[0] != pipe.model.config.decoder_start_token_id
    # No greedy continuation here has a "▁" token, which every string's first token is: n-gram
    # blocking brings "▁me".
    story = {"max_new_tokens": 12, "no_repeat_ngram_size": 2}
    story_ids = pipe("a long story about nothing", return_tensors=True, **story)[0]["generated_token_ids"].tolist()
    stop = "me xyz"
    assert tok.encode(stop, add_special_tokens=False)[0] in story_ids[1:-1], story_ids

    def req(params, inputs=T5_PROMPT, max_new_tokens=6):
        return {"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens, **params}}

    return [
        req({"return_tensors": True}),
        req({"return_tensors": True}, inputs=[T5_PROMPT, "the food was great"], max_new_tokens=4),
        req({"return_text": False}),
        req({"clean_up_tokenization_spaces": True}),
        {"inputs": "a long story about nothing", "parameters": {**story, "stop_sequence": stop}},
        req({"suppress_tokens": distinct[:2]}, inputs=T5_VARIED),
        req({"begin_suppress_tokens": new[:1]}, inputs=T5_VARIED),
        req({"sequence_bias": [[new[:1], -100.0]]}, inputs=T5_VARIED),
        req({"encoder_repetition_penalty": 1.5}, inputs=T5_VARIED),
        req({"encoder_no_repeat_ngram_size": 1}, inputs=T5_VARIED),
        req({"decoder_start_token_id": pipe.model.config.decoder_start_token_id}),  # the default (<pad>)
        req({"decoder_start_token_id": good[0]}),
        req({"forced_bos_token_id": good[0]}),
        req({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}, inputs=T5_VARIED),
        req({"prefix": "x"}),  # not a text2text parameter: reaches generate
        req({"add_special_tokens": False}),  # likewise
    ]


T5_TASK_PARAMS_CASES = [
    {"inputs": TASK_CASES[0]["inputs"], "parameters": {"return_tensors": True}},
    {"inputs": ["I love this", "it is good"], "parameters": {"return_tensors": True}},
    {"inputs": "I love this", "parameters": {"return_tensors": True, "num_beams": 1, "max_new_tokens": 6}},
]


def params():
    table = []
    for family in LM_PARAMS:
        table += params_golden("text-generation", f"{family}-lm", lm_params_cases(family))
    table += params_golden("text2text-generation", "t5-lm", t5_params_cases())
    # t5-tasks as t5() makes its goldens: the pipeline task is the golden folder (the tests' HF_TASK).
    table += params_golden("summarization", "t5-tasks", T5_TASK_PARAMS_CASES)
    table += params_golden("translation_en_to_de", "t5-tasks", T5_TASK_PARAMS_CASES)
    for name, i, request, outcome in table:
        inputs = json.dumps(request["inputs"], ensure_ascii=False)
        print(f"{name:48} {i:3} {inputs[:28]:28} {json.dumps(request.get('parameters', {}))}\n{'':53}-> {outcome}")


def main():
    if sys.argv[1:] == ["params"]:
        return params()
    if sys.argv[1:] == ["smollm2"]:
        return smollm2()
    if sys.argv[1:] == ["smollm2-quants"]:
        return smollm2_quants()
    if sys.argv[1:] == ["t5"]:
        return t5()
    if sys.argv[1:] == ["seq2seq"]:
        seq2seq()
        return marian_spm()
    only = sys.argv[1:] or list(FAMILIES)
    for i, family in enumerate(only):
        torch.manual_seed(200 + 7 * list(FAMILIES).index(family))
        model, fast = FAMILIES[family]()
        out = save(f"{family}-lm", model, fast)
        golden("text-generation", f"{family}-lm", out, CASES)


if __name__ == "__main__":
    main()
