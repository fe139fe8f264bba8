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


def main():
    if sys.argv[1:] == ["smollm2"]:
        return smollm2()
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
