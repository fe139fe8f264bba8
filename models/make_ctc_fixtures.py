"""CTC speech recognition fixtures (automatic-speech-recognition with Wav2Vec2ForCTC, HubertForCTC,
Data2VecAudioForCTC, WavLMForCTC, UniSpeechForCTC and UniSpeechSatForCTC): nine tiny seeded models (two wav2vec2,
two HuBERT, a Data2VecAudio, two WavLM, a UniSpeech, a UniSpeechSat) and the goldens of transformers 4.51.3's ASR pipeline on the sample audio files of
make_audio_fixtures.py / make_asr_longform_goldens.py, as the DLC computes them, plus the intermediate
tensors of one forward pass for debugging the network.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, numpy, safetensors), after
make_audio_fixtures.py and make_asr_longform_goldens.py (which write models/fixtures/audio/):
    apt-get install -y ffmpeg
    ~/.cache/dlc-peer/venv/bin/python models/make_ctc_fixtures.py
ffmpeg is what the pipeline decodes the audio bytes with (transformers.pipelines.audio_utils.ffmpeg_read).
Everything is seeded and runs on one CPU thread; re-running on the same kind of CPU gives byte-identical files
(on another, torch's kernels round the lm_head's calibration differently: its weights move by ~1e-6 and the
goldens' margins with them; the WavLM and UniSpeech models were made on an AMD Zen 4, the others before on other CPUs, and
their committed files kept). The outputs are committed, so tests and CI need none of this.

Writes
  models/tiny/asr-wav2vec2/ (facebook/wav2vec2-base-960h style: feat_extract_norm "group", post-norm
    encoder (do_stable_layer_norm false), conv_bias false; feature extractor do_normalize true,
    return_attention_mask false) and models/tiny/asr-wav2vec2-lv60/ (facebook/wav2vec2-large-960h-lv60-self
    style: feat_extract_norm "layer", pre-norm encoder (do_stable_layer_norm true), conv_bias true;
    return_attention_mask true): Wav2Vec2ForCTC in model.safetensors and config.json, and a
    Wav2Vec2Processor (preprocessor_config.json; Wav2Vec2CTCTokenizer: vocab.json, tokenizer_config.json,
    special_tokens_map.json). Both have the real conv feature encoder's kernels (10,3,3,3,3,2,2) and
    strides (5,2,2,2,2,2,2) (320 samples per logit frame, inputs_to_logits_ratio 320) at width 32,
    hidden_size 32, 2 layers, 2 heads, intermediate_size 64, a positional conv of 16 taps in 4 groups
    (weight-normed over dim 2), gelu, float32, and the 32-token vocabulary of facebook/wav2vec2-base-960h
    (<pad> = 0 is the CTC blank, "|" the word delimiter). The weights are random (seeded; every bias and
    norm weight the initialiser leaves at 0 or 1 is perturbed so that none is trivial) and the lm_head is
    shaped (random rows with the hidden states' mean direction taken out, blank and "|" biases tuned so
    that about 45% and 12% of the frames of the sample files pick them, <s> </s> <unk> biased down but
    not out) so that the transcripts are several "words" of letters, differ between files, collapse
    repeated letters, and here and there hold a special token (the pipeline decodes CTC with
    skip_special_tokens false: "<s>", "</s>" and "<unk>" stay in the text; <pad> is dropped). With the
    seeds below: "<s>"/"</s>" in asr-wav2vec2's speech44k_stereo.wav and speech.ogg transcripts and in
    both models' chunked speech16k_long.wav ones; <unk> is never picked; silence16k.wav gives "".
    model.safetensors of asr-wav2vec2 holds the positional conv's weight norm under torch 2.6's names
    (...pos_conv_embed.conv.parametrizations.weight.original0 / original1); that of asr-wav2vec2-lv60
    under the legacy names the Hub checkpoints use (...pos_conv_embed.conv.weight_g / weight_v), which
    transformers maps back on load (checked: same logits).
  models/tiny/asr-hubert/ (facebook/hubert-large-ls960-ft style: HubertForCTC, the lv60 settings above,
    feat_proj_layer_norm true, the legacy weight-norm names) and models/tiny/asr-hubert-bn/ (HubertForCTC
    with conv_pos_batch_norm true, as utter-project/mHuBERT-147: a BatchNorm1d with perturbed running
    statistics before a plain positional conv; feat_proj_layer_norm false; otherwise the base settings),
    same shapes, vocabulary and head shaping; seeds from `--search`. models/tiny/asr-data2vec-audio/
    (Data2VecAudioForCTC, facebook/data2vec-audio-base-960h style: layer norms on the feature convolutions,
    post-norm layers, 3 chained positional convolutions of 5 taps in 4 groups, each followed by a layer
    norm without parameters and GELU; the base feature extractor settings). models/tiny/asr-wavlm/
    (WavLMForCTC, microsoft/wavlm-base-plus style: the base settings above) and models/tiny/asr-wavlm-large/
    (microsoft/wavlm-large style: the lv60 settings, the legacy weight-norm names), both with the real 320
    relative position buckets up to 800 frames apart (the sample files reach the logarithmic buckets, the long
    file the clamp) and gru_rel_pos_const perturbed like the norm weights. models/tiny/asr-unispeech/
    (UniSpeechForCTC, microsoft/unispeech-large-1500h-cv style: the lv60 settings) and
    models/tiny/asr-unispeech-sat/ (UniSpeechSatForCTC, microsoft/unispeech-sat-base-100h-libri-ft style:
    the base settings): Wav2Vec2's network under their prefixes. The WavLM and UniSpeech configs name
    tokenizer_class (the pipeline loads no tokenizer for them otherwise).
  models/golden/automatic-speech-recognition/ctc.json: a list of records {"model", "audio" (file
    name), "content_type" (as in make_audio_fixtures.py: the DLC's raw body is the file's bytes, handed
    to the pipeline as `bytes`), "parameters" (absent when none: the call is pipe(bytes, **parameters)),
    "output" (the pipeline's answer; tuples as lists), "argmax_ids" (the per-frame argmax ids of the
    model's logits for the whole input, absent when chunked), "attention_mask" (whether the pipeline
    passed an attention_mask to the model: it asks the feature extractor for one when not chunking,
    whatever the model; chunks get one only when preprocessor_config says return_attention_mask),
    "num_chunks" (model calls, when chunked), "min_logit_margin" (the smallest gap between the best
    and second-best logit over every frame of every model call of the request: how close the nearest
    tie came) and "min_logit_margin_frame" (its frame, for unchunked requests)}. Records with "kind":
    "error" hold the exception as "error" ("TypeName: message") instead of an output.
    Cases, for each model: every sample file without parameters (speech16k_long.wav too, 64 s in one
    pass); return_timestamps "char" and "word" on speech16k.wav and speech44k_stereo.wav; chunk_length_s
    1.0 with the default stride (chunk_length_s / 6) and with stride_length_s [0.2, 0.1] on
    speech16k.wav and speech16k_long.wav; chunking with word (and char) timestamps; stride_length_s 0.25
    (4000 samples = 12.5 frames: Python's round() halves to even, 12 frames); the refusals
    (return_timestamps true or false, return_language, a stride longer than half the chunk, notaudio.wav,
    truncated.wav); generate_kwargs and the deprecated max_new_tokens (CTC ignores both).
  models/golden/automatic-speech-recognition/ctc-speech16k.npz (uncompressed, fixed zip dates):
    for each model (prefix "base_" for asr-wav2vec2, "lv60_" for asr-wav2vec2-lv60, "hubert_" and
    "hubertbn_" for the HuBERT ones, "data2vec_" for Data2VecAudio, "wavlm_" and "wavlmlarge_" for WavLM,
    "unispeech_" and "unispeechsat_" for UniSpeech(Sat);
    HuBERT has no normed_features), float32, for
    speech16k.wav as the pipeline decodes it (ffmpeg_read at 16 kHz) and runs it unchunked (with the
    attention mask of ones it passes):
      input_values (samples,): the feature extractor's output (zero mean, unit variance);
      extract_features (frames, 32): the conv feature encoder's output (after its last GELU),
        transposed; normed_features (frames, 32): feature_projection.layer_norm of it (what
        Wav2Vec2Model returns as "extract_features"); projected (frames, 32): feature_projection's
        output, the encoder's input;
      encoder_hidden_states (3, frames, 32): the encoder's output_hidden_states. For the base model:
        [0] layer_norm(projected + pos_conv(projected)), [1] after layer 0, [2] after layer 1 (post-norm
        layers). For lv60: [0] projected + pos_conv(projected) (no norm), [1] after layer 0 (pre-norm
        layers, no norm at their output), [2] the encoder's final layer_norm of layer 1's output;
      hidden_states (frames, 32): the last encoder hidden state (= encoder_hidden_states[2]);
      logits (frames, 32): lm_head's output.
"""

import io
import json
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from itertools import groupby

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioForCTC,
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
    UniSpeechConfig,
    UniSpeechForCTC,
    UniSpeechSatConfig,
    UniSpeechSatForCTC,
    WavLMConfig,
    WavLMForCTC,
)
from transformers.pipelines.audio_utils import ffmpeg_read

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO = os.path.join(HERE, "fixtures", "audio")
TINY = os.path.join(HERE, "tiny")
ASR_GOLDEN = os.path.join(HERE, "golden", "automatic-speech-recognition")

# facebook/wav2vec2-base-960h's vocab.json (the lv60 checkpoints have the same)
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10,
         "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19, "F": 20, "G": 21,
         "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29, "Q": 30, "Z": 31}
BLANK, DELIMITER, SPECIALS = 0, 4, [1, 2, 3]
ID_TO_TOKEN = {v: k for k, v in VOCAB.items()}

CONTENT_TYPES = {".wav": "audio/wave", ".flac": "audio/x-flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
SAMPLES = ["speech16k.wav", "speech16k.flac", "speech44k_stereo.wav", "speech8k.wav", "speech48k_f32.wav",
           "speech22k.mp3", "speech.ogg", "silence16k.wav", "tone16k.wav"]
LONG = "speech16k_long.wav"
REFUSED = ["notaudio.wav", "truncated.wav"]

# name: (family, lv60 style, body seed, lm_head seed). The wav2vec2 ones were chosen by a search (body seeds
# 1-7, lm_head seeds 0-99) for the widest min_logit_margin over all the goldens' frames, among the heads that
# leave silence16k.wav empty and pick <s> </s> <unk> on a few frames (1-39); with them every speech transcript
# has spaces. The HuBERT, Data2VecAudio, WavLM and UniSpeech ones by `--search NAME` (body seeds 1-4, lm_head seeds 0-39; the same rule on the
# unchunked sample files), which prints the candidates best first.
# Families: "wav2vec2" (Wav2Vec2ForCTC); "hubert" (HubertForCTC, facebook/hubert-large-ls960-ft style when
# lv60: feat_proj_layer_norm true, weight-normed positional conv under the legacy names); "hubert-bn"
# (HubertForCTC with conv_pos_batch_norm true, as mHuBERT-147: a batch norm before a plain positional conv,
# and feat_proj_layer_norm false: no norm before the projection); "data2vec-audio" (Data2VecAudioForCTC, as
# facebook/data2vec-audio-base-960h: chained positional convolutions, each with a parameterless layer norm);
# "wavlm" (WavLMForCTC: the Wav2Vec2 network with gated relative position biases in its attention, the
# bucketed table in the first layer shared by the rest; base-plus style, or large style when lv60).
MODELS = {
    "asr-wav2vec2": ("wav2vec2", False, 2, 37),
    "asr-wav2vec2-lv60": ("wav2vec2", True, 5, 73),
    "asr-hubert": ("hubert", True, 2, 30),
    "asr-hubert-bn": ("hubert-bn", False, 1, 34),
    "asr-data2vec-audio": ("data2vec-audio", False, 3, 27),
    "asr-wavlm": ("wavlm", False, 4, 26),
    "asr-wavlm-large": ("wavlm", True, 4, 32),
    "asr-unispeech": ("unispeech", True, 1, 34),
    "asr-unispeech-sat": ("unispeech-sat", False, 2, 39),
}
PREFIXES = {"asr-wav2vec2": "base_", "asr-wav2vec2-lv60": "lv60_", "asr-hubert": "hubert_",
            "asr-hubert-bn": "hubertbn_", "asr-data2vec-audio": "data2vec_", "asr-wavlm": "wavlm_",
            "asr-wavlm-large": "wavlmlarge_", "asr-unispeech": "unispeech_",
            "asr-unispeech-sat": "unispeechsat_"}
INIT_RANGE = 0.2  # std of the Linear weights (transformers' default 0.02 leaves attention near uniform)
PERTURB = 0.1  # std of the noise on biases and norm weights left at 0 / 1 by the initialiser
HEAD_SCALE = 4.0  # std of the lm_head rows (logits of std 12-16, within about +-75, as large as real checkpoints')
BLANK_SHARE, DELIMITER_SHARE = 0.45, 0.12  # of the calibration frames
SPECIAL_BIAS = -3.0  # times HEAD_SCALE: <s> </s> <unk> win only now and then
CALIBRATION = ["speech16k.wav", "speech44k_stereo.wav", "speech8k.wav", "speech48k_f32.wav", "speech22k.mp3",
               "speech.ogg", "tone16k.wav"]
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def read(name):
    with open(os.path.join(AUDIO, name), "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------

def make_config(family, lv60):
    common = dict(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_act="gelu", conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embedding_groups=4, conv_bias=lv60, initializer_range=INIT_RANGE, pad_token_id=BLANK,
        bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    if family == "data2vec-audio":
        # facebook/data2vec-audio-base-960h's layout (layer norms on every feature convolution and
        # post-norm layers, which Data2VecAudioConfig has no switches for): 3 chained positional
        # convolutions of 5 taps (the real ones: 5 of 19)
        return Data2VecAudioConfig(**common, num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
    extra = {}
    config_class = Wav2Vec2Config
    if family == "wavlm":
        # the real 320 buckets up to 800 frames apart: the sample files reach the logarithmic ones,
        # the long file the clamp. tokenizer_class: without it the pipeline loads no tokenizer for a
        # WavLM config (it is not in TOKENIZER_MAPPING) and fails decoding (AttributeError: 'NoneType'
        # object has no attribute 'decode'); fine-tuned WavLM CTC checkpoints that work in the DLC name it.
        config_class = WavLMConfig
        extra = {"tokenizer_class": "Wav2Vec2CTCTokenizer"}
    if family.startswith("unispeech"):
        # the Wav2Vec2 network (pre-training's extras aside); no tokenizer mapping either, as WavLM
        config_class = UniSpeechConfig if family == "unispeech" else UniSpeechSatConfig
        extra = {"tokenizer_class": "Wav2Vec2CTCTokenizer"}
    if family.startswith("hubert"):
        config_class = HubertConfig
        extra = {"feat_proj_layer_norm": family == "hubert", "conv_pos_batch_norm": family == "hubert-bn"}
    return config_class(**common, **extra, num_conv_pos_embeddings=16,
                        feat_extract_norm="layer" if lv60 else "group", do_stable_layer_norm=lv60)


def make_processor(lv60, directory):
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=lv60)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.json")
        with open(path, "w") as f:
            json.dump(VOCAB, f)
        tok = Wav2Vec2CTCTokenizer(path, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   word_delimiter_token="|", do_lower_case=False)
    assert tok.get_vocab() == VOCAB and len(tok) == len(VOCAB)
    processor = Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok)
    processor.save_pretrained(directory)
    return processor


def perturb(model, seed):
    """Noise on every bias left at 0 and every norm weight left at 1 by the initialiser, and running
    statistics for a batch norm (a mean of 0 and variance of 1 would make it an identity)."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            ones = name.endswith(("weight", "gru_rel_pos_const")) and bool((p == 1).all())
            if name.endswith("bias") and bool((p == 0).all()) or ones:
                p.add_(PERTURB * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(torch.exp(0.5 * torch.randn(b.shape, generator=g)))


def pipeline_inputs(fe, wave):
    """The feature extractor call of AutomaticSpeechRecognitionPipeline.preprocess for CTC, unchunked."""
    return fe(wave, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=True)


def calibration_states(model, fe):
    states = []
    for name in CALIBRATION:
        x = pipeline_inputs(fe, ffmpeg_read(read(name), 16000))
        with torch.no_grad():
            states.append(model.base_model(x["input_values"], attention_mask=x["attention_mask"]).last_hidden_state[0])
    return torch.cat(states)


def shape_head(model, fe, head_seed):
    """Random lm_head rows without the hidden states' mean direction (else one letter wins every frame),
    blank and delimiter biases tuned to their shares of the calibration frames."""
    states = calibration_states(model, fe)
    g = torch.Generator().manual_seed(head_seed + 2000)
    weight = torch.randn(len(VOCAB), model.config.hidden_size, generator=g) * HEAD_SCALE
    mean = states.mean(0)
    mean = mean / mean.norm()
    weight -= torch.outer(weight @ mean, mean)
    bias = torch.zeros(len(VOCAB))
    bias[SPECIALS] = SPECIAL_BIAS * HEAD_SCALE
    for _ in range(200):
        picked = (states @ weight.T + bias).argmax(-1)
        bias[BLANK] += 2 * HEAD_SCALE * (BLANK_SHARE - (picked == BLANK).float().mean())
        bias[DELIMITER] += 2 * HEAD_SCALE * (DELIMITER_SHARE - (picked == DELIMITER).float().mean())
    with torch.no_grad():
        model.lm_head.weight.copy_(weight)
        model.lm_head.bias.copy_(bias)


def legacy_weight_norm_names(directory):
    """Rename the positional conv's parametrization tensors to the weight_g / weight_v of Hub checkpoints."""
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    renamed = {}
    for key, value in tensors.items():
        key = key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        key = key.replace("conv.parametrizations.weight.original1", "conv.weight_v")
        renamed[key] = value
    assert sum(k.endswith(("weight_g", "weight_v")) for k in renamed) == 2, sorted(renamed)
    save_file(renamed, path, metadata={"format": "pt"})


def model_class(family):
    if family == "data2vec-audio":
        return Data2VecAudioForCTC
    if family == "wavlm":
        return WavLMForCTC
    if family == "unispeech":
        return UniSpeechForCTC
    if family == "unispeech-sat":
        return UniSpeechSatForCTC
    return Wav2Vec2ForCTC if family == "wav2vec2" else HubertForCTC


def seeded_model(family, lv60, seed, head_seed, fe):
    torch.manual_seed(seed)
    model = model_class(family)(make_config(family, lv60)).eval()
    perturb(model, seed)
    shape_head(model, fe, head_seed)
    return model


def build_model(name, family, lv60, seed, head_seed):
    directory = os.path.join(TINY, name)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    processor = make_processor(lv60, directory)
    model = seeded_model(family, lv60, seed, head_seed, processor.feature_extractor)
    model.save_pretrained(directory, safe_serialization=True)
    if lv60:
        legacy_weight_norm_names(directory)
    # the saved folder loads back to the same network (the legacy names included)
    loaded, info = model_class(family).from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info
    x = pipeline_inputs(processor.feature_extractor, ffmpeg_read(read("speech16k.wav"), 16000))
    with torch.no_grad():
        want = model(**x).logits
        got = loaded.eval()(**x).logits
    assert torch.equal(want, got), (want - got).abs().max()
    keys = load_file(os.path.join(directory, "model.safetensors")).keys()
    legacy = any(k.endswith("encoder.pos_conv_embed.conv.weight_g") for k in keys)
    assert legacy == lv60, sorted(keys)
    return directory


def search(name):
    """Candidate seeds for MODELS[name], best first: the smallest top-two logit gap over every frame of
    the unchunked sample files, among the heads that leave silence16k.wav empty and pick <s> </s> <unk>
    on 1-39 frames."""
    family, lv60 = MODELS[name][:2]
    with tempfile.TemporaryDirectory() as tmp:
        fe = make_processor(lv60, tmp).feature_extractor
    inputs = {n: pipeline_inputs(fe, ffmpeg_read(read(n), 16000)) for n in SAMPLES + [LONG]}
    found = []
    for seed in range(1, 5):
        for head_seed in range(40):
            model = seeded_model(family, lv60, seed, head_seed, fe)
            margin, specials, silent = float("inf"), 0, False
            with torch.no_grad():
                for n, x in inputs.items():
                    logits = model(**x).logits[0]
                    ids = logits.argmax(-1)
                    margin = min(margin, float(margins(logits).min()))
                    specials += int(sum((ids == s).sum() for s in SPECIALS))
                    if n == "silence16k.wav":
                        silent = ctc_text(ids.tolist()) == ""
            if silent and 1 <= specials <= 39:
                found.append((margin, seed, head_seed, specials))
    for margin, seed, head_seed, specials in sorted(found, reverse=True)[:10]:
        print(f"{name}: body seed {seed}, head seed {head_seed}: min margin {margin:.4f}, {specials} special frames")


# ---------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------

class Recorder:
    """Hooks on the pipeline's model: the attention_mask it was given and the logits of every call."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self.before, with_kwargs=True)
        model.register_forward_hook(self.after)

    def before(self, module, args, kwargs):
        self.calls.append({"attention_mask": kwargs.get("attention_mask") is not None})

    def after(self, module, args, output):
        self.calls[-1]["logits"] = output.logits.detach()[0].clone()


def margins(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).numpy()


def ctc_text(ids):
    """The rule the Rust side implements: collapse repeats, drop blanks, "|" -> space, strip."""
    tokens = [ID_TO_TOKEN[i] for i, _ in groupby(ids) if i != BLANK]
    return "".join(" " if t == "|" else t for t in tokens).strip()


def plain(value):
    """Tuples to lists and numpy scalars to Python numbers, as json.dump writes them."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def asr_record(pipe, recorder, model_name, audio, content_type, parameters):
    raw = read(audio)
    record = {"model": model_name, "audio": audio, "content_type": content_type}
    if parameters:
        record["parameters"] = parameters
    recorder.calls.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = pipe(raw, **(parameters or {}))
    except Exception as error:  # noqa: BLE001 - the refusal is the golden
        record["kind"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        return record
    record["output"] = plain(output)
    calls = recorder.calls
    assert calls and all("logits" in c for c in calls)
    masks = {c["attention_mask"] for c in calls}
    assert len(masks) == 1
    record["attention_mask"] = masks.pop()
    chunked = bool(parameters and parameters.get("chunk_length_s"))
    if chunked:
        record["num_chunks"] = len(calls)
        record["min_logit_margin"] = round(float(min(margins(c["logits"]).min() for c in calls)), 6)
        return record
    assert len(calls) == 1
    logits = calls[0]["logits"]
    ids = logits.argmax(-1).tolist()
    # the same logits from the feature extractor and model directly
    x = pipeline_inputs(pipe.feature_extractor, ffmpeg_read(raw, 16000))
    with torch.no_grad():
        direct = pipe.model(**x).logits[0]
    assert torch.equal(direct, logits), (direct - logits).abs().max()
    assert ctc_text(ids) == output["text"], (ctc_text(ids), output)
    record["argmax_ids"] = ids
    m = margins(logits)
    record["min_logit_margin"] = round(float(m.min()), 6)
    record["min_logit_margin_frame"] = int(m.argmin())
    return record


def cases():
    wav = "audio/wave"
    out = [(name, CONTENT_TYPES[os.path.splitext(name)[1]], None) for name in SAMPLES + [LONG]]
    for name in ["speech16k.wav", "speech44k_stereo.wav"]:
        out += [(name, wav, {"return_timestamps": "char"}), (name, wav, {"return_timestamps": "word"})]
    for name in ["speech16k.wav", LONG]:
        out += [(name, wav, {"chunk_length_s": 1.0}),
                (name, wav, {"chunk_length_s": 1.0, "stride_length_s": [0.2, 0.1]})]
    out += [("speech16k.wav", wav, {"chunk_length_s": 1.0, "return_timestamps": "word"}),
            ("speech16k.wav", wav, {"chunk_length_s": 1.0, "return_timestamps": "char"}),
            (LONG, wav, {"chunk_length_s": 1.0, "stride_length_s": [0.2, 0.1], "return_timestamps": "word"}),
            ("speech16k.wav", wav, {"chunk_length_s": 1.0, "stride_length_s": 0.25}),
            ("speech16k.wav", wav, {"chunk_length_s": 1.0, "stride_length_s": 0.6}),  # refused
            ("speech16k.wav", wav, {"return_timestamps": True}),  # refused
            ("speech16k.wav", wav, {"return_timestamps": False}),  # refused
            ("speech16k.wav", wav, {"return_language": True}),  # refused
            ("speech16k.wav", wav, {"generate_kwargs": {"max_new_tokens": 5, "num_beams": 4}}),  # ignored
            ("speech16k.wav", wav, {"max_new_tokens": 5})]  # ignored (a FutureWarning)
    out += [(name, wav, None) for name in REFUSED]
    return out


def asr_goldens(directory, model_name):
    # as the DLC toolkit builds it (transformers_utils.get_pipeline: feature_extractor=model_dir)
    pipe = transformers.pipeline(task="automatic-speech-recognition", model=directory, device=-1,
                                 feature_extractor=directory)
    assert pipe.type == "ctc", pipe.type
    recorder = Recorder(pipe.model)
    return [asr_record(pipe, recorder, model_name, audio, ctype, params) for audio, ctype, params in cases()]


def tensor_goldens(directory, family, prefix):
    model = model_class(family).from_pretrained(directory).eval()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    x = pipeline_inputs(fe, ffmpeg_read(read("speech16k.wav"), 16000))
    with torch.no_grad():
        conv = model.base_model.feature_extractor(x["input_values"]).transpose(1, 2)
        projection = model.base_model.feature_projection(conv)
        out = model(**x, output_hidden_states=True)
        base = model.base_model(**x, output_hidden_states=True)
    normed = {}
    if family in ("wav2vec2", "data2vec-audio", "wavlm", "unispeech", "unispeech-sat"):
        # their feature projections return the normed features too
        projection, normed = projection
        assert torch.equal(base.extract_features, normed)
        normed = {"normed_features": normed[0]}
    assert torch.equal(base.last_hidden_state, base.hidden_states[-1])
    assert torch.equal(out.logits, model.lm_head(base.last_hidden_state))
    arrays = {
        "input_values": x["input_values"][0],
        "extract_features": conv[0],
        **normed,
        "projected": projection[0],
        "encoder_hidden_states": torch.stack([h[0] for h in base.hidden_states]),
        "hidden_states": base.last_hidden_state[0],
        "logits": out.logits[0],
    }
    return {prefix + k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in arrays.items()}


def write_npz(path, arrays):
    """np.savez stamps each member with the time of writing; this writes fixed dates (byte-identical reruns)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=FIXED_DATE)
            info.external_attr = 0o644 << 16
            z.writestr(info, buf.getvalue())


def write_json(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    assert transformers.__version__ == "4.51.3", transformers.__version__
    torch.set_num_threads(1)
    if len(sys.argv) == 3 and sys.argv[1] == "--search":
        search(sys.argv[2])
        return
    records, arrays = [], {}
    for name, (family, lv60, seed, head_seed) in MODELS.items():
        directory = build_model(name, family, lv60, seed, head_seed)
        records += asr_goldens(directory, name)
        arrays.update(tensor_goldens(directory, family, PREFIXES[name]))
    write_json(os.path.join(ASR_GOLDEN, "ctc.json"), records)
    write_npz(os.path.join(ASR_GOLDEN, "ctc-speech16k.npz"), arrays)


if __name__ == "__main__":
    main()
