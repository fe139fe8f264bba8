"""Goldens of the speech pipeline's word timestamps (`return_timestamps="word"`, issue 15) on the
tiny seeded Whisper models of models/make_audio_fixtures.py, as transformers 4.51.3 computes them:
cross-attention of the generation config's `alignment_heads`, normalised over the tokens, median
filtered, averaged, aligned to the audio frames by dynamic time warping, then grouped into words.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, numpy), after make_audio_fixtures.py and
make_asr_longform_goldens.py (which writes speech16k_long.wav):
    ~/.cache/dlc-peer/venv/bin/python models/make_asr_word_timestamp_goldens.py
No ffmpeg is needed: the pipeline is handed each file's decoded waveform as ffmpeg_read returned
it (models/golden/audio-features/<name>.wave.npy, or the s16 samples of a 16 kHz mono file), the
same path as the DLC's raw bytes from there on.

Writes models/golden/automatic-speech-recognition/whisper-words.json: a list of records like
whisper-longform.json's {"model", "audio", "content_type", "parameters", "output" or "error"} plus,
for diagnosis, "generate_calls": per `model.generate` call of the pipeline, its "tokens" (the
segments' ids) and "token_timestamps" (one per token, seconds), and "dtw_min_margin": the
smallest gap, over every choice the time warping made, between the cost it took and the next
best (how close the alignment came to a tie; a float32 rounding can flip a choice nearer than
about 1e-5). Records whose model had its `alignment_heads` removed (a copy in a temporary folder;
the test does the same) have "model" "<name> without alignment_heads".
"""

import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import torch
import transformers
from transformers.models.whisper import generation_whisper

from make_asr_longform_goldens import LONG, jsonable, read_s16, write_golden

ROOT = os.path.dirname(os.path.abspath(__file__))
FEATURES = os.path.join(ROOT, "golden", "audio-features")
GOLDEN = os.path.join(ROOT, "golden", "automatic-speech-recognition", "whisper-words.json")

margins = []


def recording_dtw(matrix):
    """transformers' _dynamic_time_warping, also noting the smallest gap between the cost chosen
    and the next best at each step."""
    output_length, input_length = matrix.shape
    cost = np.ones((output_length + 1, input_length + 1), dtype=np.float32) * np.inf
    cost[0, 0] = 0
    best_gap = np.inf
    for j in range(1, input_length + 1):
        for i in range(1, output_length + 1):
            c = sorted([cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]])
            if np.isfinite(c[1]):
                best_gap = min(best_gap, float(c[1]) - float(c[0]))
            cost[i, j] = matrix[i - 1, j - 1] + c[0]
    margins.append(best_gap)
    return original_dtw(matrix)


original_dtw = generation_whisper._dynamic_time_warping
generation_whisper._dynamic_time_warping = recording_dtw


def waveform(audio):
    if audio == LONG:
        return read_s16(audio)
    return np.load(os.path.join(FEATURES, f"{audio}.wave.npy"))


CONTENT_TYPES = {".wav": "audio/wave", ".flac": "audio/x-flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


def pipeline_record(pipe, model_name, audio, parameters):
    """The pipeline's answer on the file's waveform, or the error it raised (the refusal is the
    golden)."""
    rec = {"model": model_name, "audio": audio,
           "content_type": CONTENT_TYPES[os.path.splitext(audio)[1]], "parameters": parameters}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = pipe({"raw": waveform(audio), "sampling_rate": 16000}, **parameters)
        rec["output"] = jsonable(output)
    except Exception as error:  # noqa: BLE001 - the refusal is the golden
        rec["kind"] = "error"
        rec["error"] = f"{type(error).__name__}: {error}"
    return rec


def record(pipe, model_name, audio, parameters):
    calls = []
    generate = pipe.model.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        if isinstance(out, dict) and "segments" in out:
            for segments in out["segments"]:
                tokens = [t for s in segments for t in s["tokens"].tolist()]
                times = [t for s in segments for t in s["token_timestamps"].tolist()]
                calls.append({"tokens": tokens, "token_timestamps": times})
        return out

    pipe.model.generate = recording
    margins.clear()
    try:
        rec = pipeline_record(pipe, model_name, audio, parameters)
    finally:
        pipe.model.generate = generate
    rec["generate_calls"] = calls
    if margins:
        rec["dtw_min_margin"] = min(margins)
    return rec


def cases(multilingual):
    word = {"return_timestamps": "word"}
    out = [
        ("speech16k.wav", word),
        ("tone16k.wav", word),
        ("silence16k.wav", word),
        ("speech44k_stereo.wav", word),
        ("speech.ogg", word),
        ("speech16k.wav", {**word, "return_language": True}),
        ("speech16k.wav", {**word, "generate_kwargs": {"max_new_tokens": 5}}),
        ("speech16k.wav", {**word, "chunk_length_s": 2}),
        ("speech16k.wav", {**word, "generate_kwargs": {"num_beams": 2, "max_new_tokens": 12}}),
        (LONG, word),  # long-form: every 30 s window aligned whole, offset by its seek
        (LONG, {**word, "chunk_length_s": 10}),
        (LONG, {**word, "chunk_length_s": 10, "stride_length_s": 3}),
        (LONG, {**word, "chunk_length_s": 10, "stride_length_s": 3, "batch_size": 4}),
    ]
    if multilingual:
        out += [
            ("speech16k.wav", {**word, "generate_kwargs": {"language": "fr"}}),
            (LONG, {**word, "generate_kwargs": {"language": "de"}, "return_language": True}),
        ]
    return out


def without_alignment_heads(directory):
    copy = tempfile.mkdtemp()
    for name in os.listdir(directory):
        shutil.copy(os.path.join(directory, name), copy)
    path = os.path.join(copy, "generation_config.json")
    with open(path) as f:
        config = json.load(f)
    del config["alignment_heads"]
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return copy


def pipeline(directory):
    return transformers.pipeline(task="automatic-speech-recognition", model=directory, device=-1,
                                 feature_extractor=directory)


def main():
    records = []
    for model_name, multilingual in [("asr-whisper", True), ("asr-whisper-en", False)]:
        directory = os.path.join(ROOT, "tiny", model_name)
        pipe = pipeline(directory)
        for audio, parameters in cases(multilingual):
            rec = record(pipe, model_name, audio, parameters)
            print(model_name, audio, parameters, rec.get("dtw_min_margin"),
                  str(rec.get("output", rec.get("error")))[:120])
            records.append(rec)
    bare = without_alignment_heads(os.path.join(ROOT, "tiny", "asr-whisper"))
    rec = record(pipeline(bare), "asr-whisper without alignment_heads", "speech16k.wav",
                 {"return_timestamps": "word"})
    print(rec["model"], rec.get("error"))
    records.append(rec)
    shutil.rmtree(bare)
    write_golden(GOLDEN, records)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
