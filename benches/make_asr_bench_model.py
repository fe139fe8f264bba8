"""A realistic-size speech recognizer for benches/load_asr.py: Whisper with the exact shapes of
`openai/whisper-tiny` (d_model 384, 4 encoder + 4 decoder layers, 6 heads, ffn 1536, 80 mel bins,
max_source_positions 1500, max_target_positions 448) and seeded random weights, EXCEPT the
vocabulary: the tokenizer, preprocessor and generation config are copied from the small test model
models/tiny/asr-whisper/, whose vocabulary has 1909 tokens, so vocab_size is 1909 instead of 51865.
That is whisper-tiny's compute with its 51865-token output layer (tied to the token embedding)
replaced by a 1909-token one: the real output projection costs 384 x (51865 - 1909), ~19M, i.e.
~20M MACs per generated token more than this model's (small next to the encoder's ~20 GMACs per
30 s window, which every request pays whatever the audio's length).

Random weights rarely emit <|endoftext|>, so generation_config.json gets max_length 64: with the
4 start tokens (<|startoftranscript|>, the detected language, <|transcribe|>, <|notimestamps|>)
that is transcripts of up to 60 tokens, i.e. a fixed-ish amount of decoding per request. Left
alone, this random decoder picks timestamp tokens (the text comes out empty, and transformers'
Whisper generate then re-decodes the window segment by segment): as in models/make_audio_fixtures.py,
one direction u of the tied embedding, switched on by the final decoder layer norm's bias, gives
special tokens -6, timestamps -8 and non-printable single bytes -4 on their logits, and <|endoftext|> -20, so that text tokens win
and every request decodes its 60 tokens. The text is gibberish; speed is what the model is for.

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_asr_bench_model.py [OUT_DIR]
Writes OUT_DIR (default models/bench/whisper-tiny-shaped)/ (models/bench is gitignored: do not
commit the weights), then transcribes models/fixtures/audio/speech16k.wav with the transformers
pipeline to check that it runs.
"""
import json
import os
import shutil
import sys
import time

import torch
import transformers
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "models", "tiny", "asr-whisper")
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "bench", "whisper-tiny-shaped")
MAX_LENGTH = 64

source_config = json.load(open(os.path.join(SOURCE, "config.json")))
VOCAB = source_config["vocab_size"]
assert VOCAB == 1909, VOCAB
config = transformers.WhisperConfig(
    vocab_size=VOCAB, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
    encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
    max_source_positions=1500, max_target_positions=448,
    # special token ids of the copied tokenizer (not whisper-tiny's 50257...)
    decoder_start_token_id=source_config["decoder_start_token_id"], pad_token_id=source_config["pad_token_id"],
    bos_token_id=source_config["bos_token_id"], eos_token_id=source_config["eos_token_id"],
    begin_suppress_tokens=None, suppress_tokens=None)
torch.manual_seed(384)
model = transformers.WhisperForConditionalGeneration(config).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(SOURCE)
first_special = tokenizer.convert_tokens_to_ids("<|endoftext|>")
first_timestamp = tokenizer.convert_tokens_to_ids("<|0.00|>")
assert first_special == source_config["eos_token_id"] and first_timestamp > first_special
offsets = torch.zeros(VOCAB)
# single bytes that are not printable ASCII decode to control characters or broken UTF-8: -4
byte_of = {v: k for k, v in bytes_to_unicode().items()}
for token, index in tokenizer.get_vocab().items():
    if index < first_special and len(token) == 1 and not 0x20 <= byte_of[token] < 0x7F:
        offsets[index] = -4.0
offsets[first_special:first_timestamp] = -6.0
offsets[first_timestamp:] = -8.0
offsets[first_special] = -20.0
gain = 4.0
u = torch.randn(config.d_model)
u /= u.norm()
with torch.no_grad():
    emb = model.model.decoder.embed_tokens.weight
    emb -= torch.outer(emb @ u, u)
    emb += torch.outer(offsets / gain, u)
    model.model.decoder.layer_norm.bias.copy_(gain * u)
assert model.proj_out.weight.data_ptr() == emb.data_ptr(), "proj_out must stay tied to the embedding"
if os.path.isdir(out):
    shutil.rmtree(out)
model.save_pretrained(out, safe_serialization=True)
# The test model's files, replacing what save_pretrained wrote for the generation config: its
# transformers_version predates 4.50 on purpose (as in the openai/whisper checkpoints; see
# models/make_audio_fixtures.py), which 4.51.3's Whisper generate needs.
for name in ("added_tokens.json", "merges.txt", "special_tokens_map.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.json", "preprocessor_config.json", "generation_config.json"):
    shutil.copy(os.path.join(SOURCE, name), os.path.join(out, name))
path = os.path.join(out, "generation_config.json")
generation = json.load(open(path))
generation["max_length"] = MAX_LENGTH
with open(path, "w") as f:
    json.dump(generation, f, indent=2, sort_keys=True)
    f.write("\n")

params = sum(p.numel() for p in model.parameters())
print(f"{out}: {params / 1e6:.1f}M parameters, vocab {VOCAB}, max_length {MAX_LENGTH}")
torch.set_num_threads(min(2, os.cpu_count() or 1))
asr = transformers.pipeline("automatic-speech-recognition", model=out, device=-1)
audio = os.path.join(ROOT, "models", "fixtures", "audio", "speech16k.wav")
for _ in range(2):
    t0 = time.monotonic()
    text = asr(open(audio, "rb").read())["text"]
    print(f"{time.monotonic() - t0:.2f} s, {len(asr.tokenizer(text, add_special_tokens=False).input_ids)} tokens: "
          f"{text!r}")
