"""Audio fixtures (automatic-speech-recognition): sample audio files made here, two tiny seeded
Whisper models, and the goldens of transformers 4.51.3's ASR pipeline on them, as the DLC
computes them, plus the decoded waveforms and log-mel features the pipeline feeds the model.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, numpy, scipy, soundfile, tokenizers):
    apt-get install -y ffmpeg espeak-ng
    ~/.cache/dlc-peer/venv/bin/python models/make_audio_fixtures.py
ffmpeg is what the pipeline decodes audio bytes with (transformers.pipelines.audio_utils.ffmpeg_read
shells out to it) and what encodes the MP3 (libmp3lame) and Ogg Vorbis (libvorbis) samples; espeak-ng
speaks the sample sentences (without it, speech-like harmonic signals are synthesised instead, and
the files, models' outputs and goldens all change). Everything is seeded; the outputs are committed,
so tests and CI need none of this. Debian 12's ffmpeg 5.1 and espeak-ng 1.51 made the committed files.

Writes
  models/fixtures/audio/: speech16k.wav (16 kHz mono s16), speech16k.flac (the same audio),
    speech44k_stereo.wav (44.1 kHz s16; speech on the left, a quieter 330 Hz tone on the right),
    speech8k.wav (8 kHz mono s16, German), speech48k_f32.wav (48 kHz mono IEEE float32),
    speech22k.mp3 (22.05 kHz mono, libmp3lame, with the Xing/LAME tag that lets decoders trim
    the encoder delay), speech.ogg (22.05 kHz mono Vorbis), silence16k.wav (1 s of zeros),
    tone16k.wav (1 s, 440 Hz), notaudio.wav (text) and truncated.wav (speech16k.wav's first 30
    bytes): the last two are refused by ffmpeg_read.
  models/tiny/asr-whisper/ (multilingual, 80 mel bins) and models/tiny/asr-whisper-en/ (English
    only, 128 mel bins as large-v3 has): WhisperForConditionalGeneration (d_model 64, 2+2 layers,
    4 heads, ffn 128, float32) in model.safetensors, config.json, generation_config.json,
    preprocessor_config.json and a fast tokenizer (tokenizer.json; tokenizer_config.json holds
    clean_up_tokenization_spaces true, as the openai/whisper ones do). The tokenizer is a byte-level
    BPE of 300 tokens (the 256 bytes in GPT-2's order, 44 merges) trained here, followed by the
    special tokens in the layout of the openai/whisper checkpoints: <|endoftext|>,
    <|startoftranscript|>, the 100 language tokens of tokenization_whisper.LANGUAGES in order,
    <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>
    (all special), then <|0.00|> .. <|30.00|> (added, not special): 1909 tokens. As in the real
    English-only checkpoints (tiny.en has 51864 tokens), the English-only vocabulary keeps the
    language tokens; only its generation config lacks lang_to_id/task_to_id, says is_multilingual
    false and forces <|notimestamps|> at position 1. generation_config.json says transformers_version
    4.31.0.dev0 as openai/whisper-tiny's does: written as 4.51.3, the pipeline raises (4.51.3's
    GenerationMixin._prepare_generation_config copies the model's forced_decoder_ids back into the
    config that Whisper's generate had cleared, then refuses them).
    The weights are random (seeded) but shaped so that the answer depends on the audio and on the
    prompt, text tokens mostly win over timestamp/language tokens, and some requests stop at
    <|endoftext|> on their own while others run to max_length (448 in all, prompt included).
  models/golden/automatic-speech-recognition/whisper.json and whisper-en.json: a list of records
    {"model", "audio" (file name), "content_type" (what the DLC would get: its raw body is the
    file's bytes, handed to the pipeline as `bytes`; note that the DLC's audio decoder passes no
    parameters with a raw body, so "parameters" stand for pipe(bytes, **parameters) however the
    server receives them), "parameters" (absent when none), "output" (the pipeline's answer),
    "tokens" (the full decoder sequence: decoder prompt, generated ids, and <|endoftext|> when
    generation stopped on it; WhisperForConditionalGeneration.generate in 4.51.3 itself returns
    only the generated ids, without the prompt and without the final <|endoftext|>),
    "decoder_prompt" (the initial decoder ids generate built), "stopped" ("eos" or "max_length"),
    "detected_language" (the token, when generate ran language detection; "language_logits_top3"
    holds the three best language logits), "min_logit_margin" (the smallest gap between the best
    and second-best processed logit over the greedy steps: how close the nearest tie came) and
    "min_logit_margin_step" (its index among the generated tokens)}. The text is always what
    dropping the special ids and the timestamp ids from "tokens" and decoding the rest gives
    (asserted). Records with "kind" are outside the main parity set: "error" (the pipeline raised;
    "error" holds the exception), "timestamps" (return_timestamps true) and "chunked"
    (chunk_length_s 2): these hold only the output.
  models/golden/audio-features/: for each sample file <name> (full file name): <name>.wave.npy,
    the float32 waveform ffmpeg_read(bytes, 16000) returns; <name>.features.npy, the float32
    log-mel features (80 x frames_stored) WhisperFeatureExtractor computes as the ASR pipeline
    calls it, cut after the first frame that only sees padding (frame ceil((samples + 200) / 160);
    all later frames equal it); speech16k.wav.features128.npy, the same with 128 mel bins;
    index.json, per file: samples, frames_stored, first_pad_frame, total_frames (3000), pad_frame
    (the last frame's values), mel_bins, the source's sample rate/channels/codec; for the stereo
    file whether ffmpeg's -ac 1 downmix is (L+R)/2 (it is not: it is (L+R)/sqrt(2),
    downmix_coefficients), for the 16 kHz s16 files that the waveform is exactly s16/32768, and
    for the resampled files how far scipy.signal.resample_poly lands from ffmpeg's resampler and
    how far swr_resample below (a model of libswresample's default filter) lands (max abs
    differences).
"""

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import warnings

import numpy as np
import soundfile as sf
import torch
import transformers
from scipy import signal
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
    WhisperTokenizerFast,
)
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
from transformers.models.whisper.tokenization_whisper import LANGUAGES
from transformers.pipelines.audio_utils import ffmpeg_read

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIO = os.path.join(HERE, "fixtures", "audio")
TINY = os.path.join(HERE, "tiny")
GOLDEN = os.path.join(HERE, "golden")
ASR_GOLDEN = os.path.join(GOLDEN, "automatic-speech-recognition")
FEATURES = os.path.join(GOLDEN, "audio-features")

ESPEAK_RATE = 22050
GENERATION_CONFIG_VERSION = "4.31.0.dev0"
CONTENT_TYPES = {".wav": "audio/wave", ".flac": "audio/x-flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
SAMPLES = ["speech16k.wav", "speech16k.flac", "speech44k_stereo.wav", "speech8k.wav", "speech48k_f32.wav",
           "speech22k.mp3", "speech.ogg", "silence16k.wav", "tone16k.wav"]
REFUSED = ["notaudio.wav", "truncated.wav"]
ENCODED_SAMPLES = {}  # samples given to the lossy encoders (make_audio fills it)

CORPUS = """The quick brown fox jumps over the lazy dog. Hello world, this is a small speech test.
Speech recognition turns spoken words into written text. One two three four five six seven eight.
The weather today is sunny with a light wind from the west. Please call me back when you can.
A tiny model listens to the audio and writes what it hears, one token after another.
Numbers, names and places: London, Paris, Berlin, the river, the station, the morning train.
She said that it's fine, they're here, we've seen it, I'm sure, and he can't come today!
What time is it? It is half past nine. Is that right? Yes, that's right."""


def run(cmd, data=None):
    out = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return out.stdout


# ---------------------------------------------------------------------------------------------
# Sample audio
# ---------------------------------------------------------------------------------------------

def speak(text, voice, seed):
    """Speech at 22.05 kHz, float64 in [-1, 1], leading/trailing silence trimmed to 0.1 s."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.wav")
            run(["espeak-ng", "-v", voice, "-s", "165", "-w", path, text])
            wave, rate = sf.read(path, dtype="float64")
        assert rate == ESPEAK_RATE, rate
    else:  # speech-like: a gliding harmonic tone with formant-shaped partials, syllable envelopes, noise
        rng = np.random.default_rng(seed)
        n = int(0.07 * len(text) * ESPEAK_RATE)
        t = np.arange(n) / ESPEAK_RATE
        f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
        phase = 2 * np.pi * np.cumsum(f0) / ESPEAK_RATE
        formants = rng.uniform([500, 1200, 2400], [800, 1800, 3000])
        wave = sum(np.exp(-((k * f0 - formants[:, None]) ** 2).min(0) / 2e5) * np.sin(k * phase) / k
                   for k in range(1, 30))
        wave *= np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 0.5
        wave = 0.6 * wave / np.abs(wave).max() + rng.normal(0, 0.01, n)
    loud = np.nonzero(np.abs(wave) > 0.01)[0]
    margin = int(0.1 * ESPEAK_RATE)
    return wave[max(loud[0] - margin, 0): loud[-1] + margin]


def resample(wave, rate):
    g = math.gcd(rate, ESPEAK_RATE)
    return signal.resample_poly(wave, rate // g, ESPEAK_RATE // g)


def to_s16(wave):
    return (np.clip(wave, -1, 1) * 32767).round().astype(np.int16)


def ffmpeg_encode(wave, rate, path, codec_args):
    """Encode float audio through ffmpeg, with bitexact flags so reruns give the same bytes."""
    pcm = to_s16(wave).astype("<i2").tobytes()
    run(["ffmpeg", "-y", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1",
         "-i", "pipe:0", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
         *codec_args, path], data=pcm)


def write_float_wav(path, wave, rate):
    """A mono IEEE-float WAV (fmt tag 3, with the fact chunk); written here because libsndfile adds
    a PEAK chunk holding the time of writing."""
    data = np.asarray(wave, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)
    fact = struct.pack("<I", len(wave))
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(data)) + data)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def make_audio():
    os.makedirs(AUDIO, exist_ok=True)
    path = lambda name: os.path.join(AUDIO, name)  # noqa: E731

    fox = speak("The quick brown fox jumps over the lazy dog.", "en-us", 1)  # ~2.5 s: longer than 2 s
    s16 = to_s16(resample(fox, 16000))  # quantised once: the WAV and the FLAC hold the same samples
    sf.write(path("speech16k.wav"), s16, 16000, subtype="PCM_16")
    sf.write(path("speech16k.flac"), s16, 16000, subtype="PCM_16")

    hello = speak("Hello world, this is a test.", "en-us", 2)
    left = resample(hello, 44100)
    t = np.arange(len(left)) / 44100
    right = 0.15 * np.sin(2 * np.pi * 330 * t)
    sf.write(path("speech44k_stereo.wav"), to_s16(np.stack([left, right], 1)), 44100, subtype="PCM_16")

    german = speak("Guten Morgen, wie geht es dir?", "de", 3)
    sf.write(path("speech8k.wav"), to_s16(resample(german, 8000)), 8000, subtype="PCM_16")

    words = speak("Speech turns into text.", "en-us", 4)
    write_float_wav(path("speech48k_f32.wav"), 0.8 * resample(words, 48000), 48000)

    french = speak("Bonjour tout le monde.", "fr-fr", 5)
    ffmpeg_encode(french, ESPEAK_RATE, path("speech22k.mp3"), ["-c:a", "libmp3lame", "-b:a", "32k"])
    ENCODED_SAMPLES["speech22k.mp3"] = len(french)

    numbers = speak("One two three four five.", "en-us", 6)
    ffmpeg_encode(numbers, ESPEAK_RATE, path("speech.ogg"), ["-c:a", "libvorbis", "-q:a", "2"])
    ENCODED_SAMPLES["speech.ogg"] = len(numbers)

    sf.write(path("silence16k.wav"), np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    t = np.arange(16000) / 16000
    sf.write(path("tone16k.wav"), to_s16(0.5 * np.sin(2 * np.pi * 440 * t)), 16000, subtype="PCM_16")

    with open(path("notaudio.wav"), "w") as f:
        f.write("This is not audio, only text in a file whose name ends in .wav.\n")
    with open(path("speech16k.wav"), "rb") as f:
        head = f.read(30)
    with open(path("truncated.wav"), "wb") as f:
        f.write(head)


# ---------------------------------------------------------------------------------------------
# Tiny Whisper models
# ---------------------------------------------------------------------------------------------

SPECIAL_AFTER_LANGUAGES = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                           "<|notimestamps|>"]
# Suppressed as the real checkpoints do in kind: punctuation and symbol tokens (bare and after a space).
SUPPRESSED_TEXT = list("\"#()*+/:;<=>@[\\]^_`{|}~")


def build_tokenizer(directory):
    """A 300-token byte-level BPE plus Whisper's special tokens, saved as a fast tokenizer."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator([CORPUS] * 4, vocab_size=300, min_frequency=2, show_progress=False, special_tokens=[])
    vocab = bpe.get_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab)))
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        vocab["<|endoftext|>"] = len(vocab)
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump(vocab, f, ensure_ascii=False)
        slow = WhisperTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                                pad_token="<|endoftext|>", clean_up_tokenization_spaces=True)
        specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                    + SPECIAL_AFTER_LANGUAGES)
        slow.add_special_tokens({"additional_special_tokens": [
            AddedToken(s, special=True, normalized=False) for s in specials]})
        slow.add_tokens([AddedToken("<|%.2f|>" % (i * 0.02), special=False, normalized=False) for i in range(1501)])
        slow.save_pretrained(os.path.join(tmp, "slow"))
        fast = WhisperTokenizerFast.from_pretrained(os.path.join(tmp, "slow"))
    fast.save_pretrained(directory)
    ids = fast.convert_tokens_to_ids(specials)
    assert ids == list(range(ids[0], ids[0] + len(ids))), "special tokens must follow the base vocabulary"
    assert fast.convert_tokens_to_ids("<|0.00|>") == ids[-1] + 1
    return fast


def make_generation_config(tok, multilingual, decoder_layers, heads):
    tid = tok.convert_tokens_to_ids
    eot, sot = tid("<|endoftext|>"), tid("<|startoftranscript|>")
    vocab = tok.get_vocab()
    punct = sorted({vocab[c] for c in [_byte_level(ch) for ch in SUPPRESSED_TEXT] if c in vocab}
                   | {vocab["Ġ" + c] for c in [_byte_level(ch) for ch in SUPPRESSED_TEXT] if "Ġ" + c in vocab})
    suppress = punct + [sot] + [tid(s) for s in SPECIAL_AFTER_LANGUAGES[:-1]]
    config = {
        "alignment_heads": [[decoder_layers - 1, 0], [decoder_layers - 1, heads // 2]],
        "begin_suppress_tokens": [vocab["Ġ"], eot],
        "bos_token_id": eot if multilingual else sot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "no_timestamps_token_id": tid("<|notimestamps|>"),
        "pad_token_id": eot,
        "prev_sot_token_id": tid("<|startofprev|>"),
        "return_timestamps": False,
        "suppress_tokens": suppress,
    }
    if multilingual:
        config["forced_decoder_ids"] = [[1, None], [2, tid("<|transcribe|>")]]
        config["lang_to_id"] = {f"<|{code}|>": tid(f"<|{code}|>") for code in LANGUAGES}
        config["task_to_id"] = {"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")}
    else:
        config["forced_decoder_ids"] = [[1, tid("<|notimestamps|>")]]
    return GenerationConfig(**config)


def _byte_level(ch):
    """The byte-level BPE symbol of an ASCII character."""
    return bytes_to_unicode()[ord(ch)]


def build_model(name, multilingual, mel_bins, seed, std, eos_bias, text_bias=0.0):
    directory = os.path.join(TINY, name)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    tok = build_tokenizer(directory)
    tid = tok.convert_tokens_to_ids
    eot, sot = tid("<|endoftext|>"), tid("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=mel_bins, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=sot, pad_token_id=eot,
        bos_token_id=eot if multilingual else sot, eos_token_id=eot, begin_suppress_tokens=None,
        suppress_tokens=None, init_std=std)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    shape_logits(model, tok, seed, eos_bias, text_bias)
    model.generation_config = make_generation_config(tok, multilingual, 2, 4)
    model.save_pretrained(directory, safe_serialization=True)
    # As in the openai/whisper checkpoints, the generation config predates transformers 4.50: with a
    # newer version there, 4.51.3's GenerationMixin._prepare_generation_config copies the model's
    # forced_decoder_ids back into the config Whisper's generate had cleared, and generation raises.
    path = os.path.join(directory, "generation_config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["transformers_version"] = GENERATION_CONFIG_VERSION
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")
    WhisperFeatureExtractor(feature_size=mel_bins, processor_class="WhisperProcessor").save_pretrained(directory)
    return directory


def shape_logits(model, tok, seed, eos_bias, text_bias):
    """Give each token's logit an offset through one direction u of the (tied) embedding:
    the final decoder layer norm adds G*u to every hidden state, and row i's component along u is
    set to c_i, so logit_i gains G*c_i. Text tokens get text_bias, timestamps and other special
    tokens a large negative offset (so that text wins), <|endoftext|> eos_bias (tuned so that some
    requests end on their own and others run to max_length)."""
    rng = np.random.default_rng(seed)
    d = model.config.d_model
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    u = torch.tensor(u, dtype=torch.float32)
    gain = 4.0
    first_special = tok.convert_tokens_to_ids("<|endoftext|>")
    first_timestamp = tok.convert_tokens_to_ids("<|0.00|>")
    offsets = torch.full((len(tok),), text_bias)
    # single bytes that are not printable ASCII decode to control characters or broken UTF-8:
    # keep them rare; merged tokens (words and word pieces) a little likelier than single letters
    byte_of = {v: k for k, v in bytes_to_unicode().items()}
    for token, index in tok.get_vocab().items():
        if index >= first_special:
            continue
        if len(token) == 1 and not 0x20 <= byte_of[token] < 0x7F:
            offsets[index] = text_bias - 4.0
        elif len(token) > 1:
            offsets[index] = text_bias + 1.0
    offsets[first_special:first_timestamp] = -6.0
    offsets[first_timestamp:] = -8.0
    offsets[first_special] = eos_bias
    with torch.no_grad():
        emb = model.model.decoder.embed_tokens.weight
        # A random decoder's hidden states share a large common direction; the tokens that happen to
        # align with it would win every step. Take it out of the text rows (twice: the rows are the
        # decoder's inputs too), so that the varying part of the hidden state picks the tokens.
        for _ in range(2):
            mean = calibration_hidden_mean(model, first_special, rng)
            mean -= (mean @ u) * u
            mean /= mean.norm()
            emb[:first_special] -= torch.outer(emb[:first_special] @ mean, mean)
        emb -= torch.outer(emb @ u, u)
        emb += torch.outer(offsets / gain, u)
        model.model.decoder.layer_norm.bias.copy_(gain * u)
    assert model.proj_out.weight.data_ptr() == emb.data_ptr(), "proj_out must stay tied to the embedding"


def calibration_hidden_mean(model, n_text, rng):
    """Mean final decoder hidden state over noise audio and random text prompts."""
    fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    states = []
    for _ in range(4):
        wave = rng.normal(size=32000) * np.repeat(rng.uniform(0, 0.3, 20), 1600)
        feats = fe(wave.astype(np.float32), sampling_rate=16000, return_tensors="pt")["input_features"]
        ids = torch.tensor(rng.integers(0, n_text, size=(1, 24)))
        out = model.model(input_features=feats, decoder_input_ids=ids).last_hidden_state
        states.append(out[0] - model.model.decoder.layer_norm.bias)
    return torch.cat(states).mean(0)


# ---------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------

def pipeline_features(pipe, wave):
    """The feature extractor call of AutomaticSpeechRecognitionPipeline.preprocess for Whisper
    (chunk_length_s None, audio <= 30 s)."""
    return pipe.feature_extractor(wave, sampling_rate=pipe.feature_extractor.sampling_rate, return_tensors="pt",
                                  return_token_timestamps=True, return_attention_mask=True)


def simple_text(tok, ids):
    """The rule the Rust side implements: drop special ids and timestamps, decode the rest."""
    specials = set(tok.all_special_ids)
    first_timestamp = tok.convert_tokens_to_ids("<|0.00|>")
    kept = [i for i in ids if i not in specials and i < first_timestamp]
    return tok.decode(kept)


def asr_record(pipe, model_name, audio, content_type, parameters):
    with open(os.path.join(AUDIO, audio), "rb") as f:
        raw = f.read()
    record = {"model": model_name, "audio": audio, "content_type": content_type}
    if parameters:
        record["parameters"] = parameters
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = pipe(raw, **(parameters or {}))
    except Exception as error:  # noqa: BLE001 - the refusal is the golden
        record["kind"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        return record
    record["output"] = output
    if parameters and ("return_timestamps" in parameters or "chunk_length_s" in parameters):
        record["kind"] = "timestamps" if "return_timestamps" in parameters else "chunked"
        return record

    model, tok, gen = pipe.model, pipe.tokenizer, pipe.generation_config
    wave = ffmpeg_read(raw, pipe.feature_extractor.sampling_rate)
    processed = pipeline_features(pipe, wave)
    kwargs = dict((parameters or {}).get("generate_kwargs", {}))
    if parameters and "max_new_tokens" in parameters:
        kwargs["max_new_tokens"] = parameters["max_new_tokens"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        plain = model.generate(input_features=processed["input_features"],
                               attention_mask=processed["attention_mask"], generation_config=gen, **kwargs)
        full = model.generate(input_features=processed["input_features"],
                              attention_mask=processed["attention_mask"], generation_config=gen,
                              return_dict_in_generate=True, output_scores=True, **kwargs)
    tokens = full.sequences[0].tolist()
    generated = plain[0].tolist()
    prompt_len = len(tokens) - len(generated) - (1 if tokens[-1] == gen.eos_token_id else 0)
    prompt = tokens[:prompt_len]
    assert tokens[prompt_len:prompt_len + len(generated)] == generated, (tokens, generated)
    assert len(full.scores) == len(tokens) - prompt_len
    text = tok._decode_asr([{"tokens": torch.tensor([tokens])}], return_timestamps=None, return_language=None,
                           time_precision=0.02)[0]
    assert text == output["text"], (text, output)
    assert simple_text(tok, tokens) == output["text"], (simple_text(tok, tokens), output)
    record["tokens"] = tokens
    record["decoder_prompt"] = prompt
    record["stopped"] = "eos" if tokens[-1] == gen.eos_token_id else "max_length"
    language_given = "language" in kwargs
    if getattr(gen, "is_multilingual", False) and not language_given:
        with torch.no_grad():
            logits = model(input_features=processed["input_features"],
                           decoder_input_ids=torch.tensor([[gen.decoder_start_token_id]])).logits[0, -1]
        lang_ids = list(gen.lang_to_id.values())
        lang_logits = logits[lang_ids]
        top = torch.topk(lang_logits, 3)
        detected = lang_ids[top.indices[0].item()]
        assert prompt[1] == detected
        record["detected_language"] = tok.convert_ids_to_tokens(detected)
        record["language_logits_top3"] = [[tok.convert_ids_to_tokens(lang_ids[i]), round(v, 5)]
                                          for i, v in zip(top.indices.tolist(), top.values.tolist())]
    margins = []
    for step in full.scores:
        best = torch.topk(step[0], 2).values
        margins.append((best[0] - best[1]).item())
    record["min_logit_margin"] = round(min(margins), 6)
    record["min_logit_margin_step"] = int(np.argmin(margins))
    if tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False) != output["text"]:
        record["clean_up_changed_text"] = True
    return record


def asr_goldens(directory, model_name, cases):
    # as the DLC toolkit builds it (transformers_utils.get_pipeline: feature_extractor=model_dir)
    pipe = transformers.pipeline(task="automatic-speech-recognition", model=directory, device=-1,
                                 feature_extractor=directory)
    records = [asr_record(pipe, model_name, audio, ctype, params) for audio, ctype, params in cases]
    return records


def default_cases():
    return [(name, CONTENT_TYPES[os.path.splitext(name)[1]], None) for name in SAMPLES]


def multilingual_cases():
    cases = default_cases()
    cases.append(("speech16k.flac", "audio/x-audio", None))
    for kwargs in [{"language": "english"}, {"language": "fr"}, {"language": "<|de|>"}, {"language": "German"},
                   {"task": "translate"}, {"task": "transcribe"}, {"max_new_tokens": 5},
                   {"language": "german", "task": "translate", "max_new_tokens": 8}]:
        cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": kwargs}))
    cases.append(("speech22k.mp3", "audio/mpeg", {"generate_kwargs": {"language": "fr"}}))
    cases.append(("speech8k.wav", "audio/wave", {"generate_kwargs": {"language": "de", "task": "translate"}}))
    cases.append(("speech.ogg", "audio/ogg", {"generate_kwargs": {"task": "translate", "max_new_tokens": 3}}))
    cases.append(("speech48k_f32.wav", "audio/wave", {"max_new_tokens": 4}))  # the deprecated top-level form
    cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": {"language": "klingon"}}))
    cases += [(name, "audio/wave", None) for name in REFUSED]
    cases.append(("speech16k.wav", "audio/wave", {"return_timestamps": True}))
    cases += timestamp_cases()
    cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": {"language": "fr"}, "return_timestamps": True}))
    cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": {"task": "translate", "max_new_tokens": 6},
                                                  "return_timestamps": True}))
    cases.append(("speech16k.wav", "audio/wave", {"return_timestamps": "char"}))  # refused
    cases.append(("speech16k.wav", "audio/wave", {"chunk_length_s": 2}))
    return cases


def timestamp_cases():
    """return_timestamps=True on every sample file but the one the plain list already has."""
    return [(name, ctype, {"return_timestamps": True}) for name, ctype, _ in default_cases()
            if name != "speech16k.wav"]


def english_cases():
    cases = default_cases()
    cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": {"max_new_tokens": 5}}))
    cases.append(("speech16k.wav", "audio/wave", {"generate_kwargs": {"language": "fr"}}))  # refused
    cases += [(name, "audio/wave", None) for name in REFUSED]
    cases.append(("speech16k.wav", "audio/wave", {"return_timestamps": True}))
    cases += timestamp_cases()
    cases.append(("speech16k.wav", "audio/wave", {"return_timestamps": True, "generate_kwargs": {"max_new_tokens": 7}}))
    return cases


# ---------------------------------------------------------------------------------------------
# Feature goldens
# ---------------------------------------------------------------------------------------------

def ffmpeg_decode(raw, rate=None, channels=None):
    """ffmpeg_read's command with the rate/channel options left out where None."""
    cmd = ["ffmpeg", "-i", "pipe:0"]
    if channels:
        cmd += ["-ac", str(channels)]
    if rate:
        cmd += ["-ar", str(rate)]
    cmd += ["-f", "f32le", "-hide_banner", "-loglevel", "quiet", "pipe:1"]
    return np.frombuffer(run(cmd, raw), np.float32)


def swr_resample(x, rate_in, rate_out):
    """A model of libswresample's default resampler as ffmpeg_read runs it (filter_size 32,
    phase_shift 10, cutoff 0.97, Kaiser beta 9, exact_rational, float32 taps), including its
    start (whole-sample mirror) and flush (half-sample mirror) edges and its output length.
    Only for rate pairs whose reduced output rate is <= 1024 (exact phases)."""
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    assert up <= 1024, "inexact phase counts interpolate between phases: not modelled"
    factor = min(rate_out * 0.97 / rate_in, 1.0)
    taps = max(math.ceil(32 / factor), 1)
    taps += taps % 2 if taps > 1 else 0
    center = (taps - 1) // 2
    x = np.asarray(x, dtype=np.float64)
    n_in = len(x)
    assert n_in > taps, "inputs shorter than the filter are handled otherwise by swr"
    # outputs: every n whose window fits in the input, then (at flush) in the input plus R mirrored samples
    first = lambda n: n * down // up - center  # noqa: E731 - first input sample of output n's window
    n = (n_in - taps) * up // down + 1
    while first(n) + taps > n_in:
        n -= 1
    while first(n) + taps <= n_in:
        n += 1
    mirrored = (min(n_in - first(n), taps) + 1) // 2
    while first(n) + taps <= n_in + mirrored:
        n += 1
    outputs = np.arange(n)
    i = np.arange(taps)
    phases = np.arange(up)[:, None]
    arg = np.pi * ((i - center) - phases / up) * factor
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(arg == 0, 1.0, np.sin(arg) / arg)
    w = 2.0 * arg / (factor * taps * np.pi)
    bank = sinc * np.i0(9.0 * np.sqrt(np.maximum(1 - w * w, 0)))
    bank = (bank / bank[0].sum()).astype(np.float32).astype(np.float64)
    index = first(outputs)[:, None] + i
    index = np.where(index < 0, -index, index)
    index = np.where(index >= n_in, 2 * n_in - 1 - index, index)
    return (bank[outputs * down % up] * x[index]).sum(1)


def probe(path):
    out = run(["ffprobe", "-v", "quiet", "-print_format", "json", "-show_streams", path])
    stream = json.loads(out)["streams"][0]
    return int(stream["sample_rate"]), int(stream["channels"]), stream["codec_name"]


def feature_goldens():
    os.makedirs(FEATURES, exist_ok=True)
    extractors = {80: WhisperFeatureExtractor(feature_size=80), 128: WhisperFeatureExtractor(feature_size=128)}
    index = {}
    for name in SAMPLES:
        path = os.path.join(AUDIO, name)
        with open(path, "rb") as f:
            raw = f.read()
        wave = ffmpeg_read(raw, 16000)
        np.save(os.path.join(FEATURES, f"{name}.wave.npy"), wave.astype(np.float32))
        rate, channels, codec = probe(path)
        entry = {"samples": int(len(wave)), "source_rate": rate, "source_channels": channels, "source_codec": codec}
        for bins, suffix in [(80, "features"), (128, "features128")]:
            if bins == 128 and name != "speech16k.wav":
                continue
            fe = extractors[bins]
            pt = fe(wave, sampling_rate=16000, return_tensors="pt", return_token_timestamps=True,
                    return_attention_mask=True)
            feats = fe(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
            assert np.array_equal(feats, pt["input_features"][0].numpy())
            assert feats.shape == (bins, 3000) and feats.dtype == np.float32
            # frame t sees samples [160 t - 200, 160 t + 200): the first frame of padding only
            first_pad = math.ceil((len(wave) + 200) / 160)
            assert (feats[:, first_pad:] == feats[:, -1:]).all()
            stored = min(first_pad + 1, 3000)
            np.save(os.path.join(FEATURES, f"{name}.{suffix}.npy"), np.ascontiguousarray(feats[:, :stored]))
            info = {"frames_stored": stored, "first_pad_frame": first_pad, "total_frames": 3000,
                    "pad_frame": [float(v) for v in feats[:, -1]], "mel_bins": bins,
                    "attention_mask_ones": int(pt["attention_mask"][0].sum()), "num_frames": int(pt["num_frames"][0])}
            if bins == 80:
                entry.update(info)
            else:
                entry["features128"] = info
        if channels == 2:
            mono = ffmpeg_decode(raw, rate=rate, channels=1)
            both = ffmpeg_decode(raw, rate=rate).reshape(-1, 2)
            mean = (both[:, 0].astype(np.float64) + both[:, 1]) / 2
            diff = float(np.abs(mono - mean).max())
            entry["downmix_is_mean"] = diff <= 1e-6
            entry["downmix_max_abs_diff"] = diff
            coefficients = np.linalg.lstsq(both.astype(np.float64), mono, rcond=None)[0]
            entry["downmix_coefficients"] = [round(float(v), 8) for v in coefficients]
            sqrt_half = (both[:, 0].astype(np.float64) + both[:, 1]) * math.sqrt(0.5)
            entry["downmix_sqrt_half_max_abs_diff"] = float(np.abs(mono - sqrt_half).max())
            assert entry["downmix_sqrt_half_max_abs_diff"] < 1e-6
            source = mono.astype(np.float64)
        else:
            source = ffmpeg_decode(raw, rate=rate).astype(np.float64)
        entry["decoded_source_samples"] = int(len(source))
        if name in ENCODED_SAMPLES:
            entry["encoded_samples"] = ENCODED_SAMPLES[name]
        if rate != 16000:
            g = math.gcd(rate, 16000)
            poly = signal.resample_poly(source, 16000 // g, rate // g)
            n = min(len(poly), len(wave))
            entry["resampled_len_poly"] = int(len(poly))
            entry["resample_poly_max_abs_diff"] = float(np.abs(poly[:n] - wave[:n]).max())
            inner = slice(64, n - 64)
            entry["resample_poly_max_abs_diff_inner"] = float(np.abs(poly[inner] - wave[inner]).max())
            model = swr_resample(source, rate, 16000)
            assert len(model) == len(wave), (len(model), len(wave))
            entry["swr_model_max_abs_diff"] = float(np.abs(model - wave).max())
            assert entry["swr_model_max_abs_diff"] < 1e-6, entry
        elif codec.startswith("pcm_s16"):
            pcm, _ = sf.read(path, dtype="int16")
            entry["s16_over_32768_max_abs_diff"] = float(np.abs(pcm / 32768.0 - wave).max())
            assert entry["s16_over_32768_max_abs_diff"] == 0.0
        index[name] = entry
    same = [np.load(os.path.join(FEATURES, f"speech16k.{ext}.wave.npy")) for ext in ("wav", "flac")]
    assert np.array_equal(*same), "speech16k.wav and speech16k.flac must hold the same samples"
    with open(os.path.join(FEATURES, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


def write_json(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    assert transformers.__version__ == "4.51.3", transformers.__version__
    torch.set_num_threads(1)
    make_audio()
    feature_goldens()
    ml = build_model("asr-whisper", True, 80, seed=25, std=0.3, eos_bias=3.5)
    en = build_model("asr-whisper-en", False, 128, seed=12, std=0.3, eos_bias=3.5)
    write_json(os.path.join(ASR_GOLDEN, "whisper.json"), asr_goldens(ml, "asr-whisper", multilingual_cases()))
    write_json(os.path.join(ASR_GOLDEN, "whisper-en.json"), asr_goldens(en, "asr-whisper-en", english_cases()))


if __name__ == "__main__":
    main()
