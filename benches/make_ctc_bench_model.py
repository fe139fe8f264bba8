"""A realistic-size CTC speech recognizer for benches/load_asr.py: Wav2Vec2ForCTC with the exact
shapes of `facebook/wav2vec2-base-960h` (7 feature-encoder convolutions of 512 channels, hidden
768, 12 post-norm layers, 12 heads, ffn 3072, a positional convolution of 128 taps in 16 groups,
the 32-token character vocabulary; ~94M parameters) and seeded random weights; the tokenizer and
preprocessor files are copied from the test model models/tiny/asr-wav2vec2/. lm_head is scaled
up (x30) so that the argmax over the vocabulary is not decided by float noise: both servers must
write the same text for the bench to run. The text is gibberish; speed is what the model is for.

With --wavlm: WavLMForCTC with microsoft/wavlm-base-plus's shapes instead (the same network plus
gated relative position biases: 320 buckets up to 800 frames; its config names tokenizer_class, as
fine-tuned WavLM CTC checkpoints must for the DLC's pipeline to load their tokenizer).

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_ctc_bench_model.py [--wavlm] [OUT_DIR]
Writes OUT_DIR (default models/bench/wav2vec2-base-shaped, or wavlm-base-plus-shaped)/ (models/bench is gitignored: do not
commit the weights), then transcribes models/fixtures/audio/speech16k.wav with the transformers
pipeline to check that it runs.
"""
import os
import shutil
import sys

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, WavLMConfig, WavLMForCTC, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "models/tiny/asr-wav2vec2")


def main(out, wavlm):
    torch.manual_seed(0)
    common = dict(vocab_size=32, pad_token_id=0, do_stable_layer_norm=False, feat_extract_norm="group",
                  conv_bias=False)
    if wavlm:
        config = WavLMConfig(**common, architectures=["WavLMForCTC"], tokenizer_class="Wav2Vec2CTCTokenizer")
        model = WavLMForCTC(config).eval()
    else:
        config = Wav2Vec2Config(**common, architectures=["Wav2Vec2ForCTC"])
        model = Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    for name in ("preprocessor_config.json", "vocab.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(os.path.join(TINY, name), os.path.join(out, name))
    asr = pipeline("automatic-speech-recognition", model=out)
    with open(os.path.join(ROOT, "models/fixtures/audio/speech16k.wav"), "rb") as f:
        print(asr(f.read()))


if __name__ == "__main__":
    args = sys.argv[1:]
    wavlm = "--wavlm" in args
    args = [a for a in args if a != "--wavlm"]
    default = "wavlm-base-plus-shaped" if wavlm else "wav2vec2-base-shaped"
    main(args[0] if args else os.path.join(ROOT, "models/bench", default), wavlm)
