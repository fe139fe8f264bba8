"""Goldens of the speech pipeline's timestamp, long-form and chunking paths (issue 15), on the
tiny seeded Whisper models of models/make_audio_fixtures.py, as transformers 4.51.3 computes them.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, numpy), after make_audio_fixtures.py:
    ~/.cache/dlc-peer/venv/bin/python models/make_asr_longform_goldens.py
No ffmpeg is needed: every input here is 16 kHz mono 16-bit PCM, which ffmpeg_read returns as
exactly s16 / 32768 (make_audio_fixtures.py asserts it for speech16k.wav), so the pipeline is
handed that array ({"raw", "sampling_rate"}: the same path as the DLC's raw bytes from there on).

Writes
  models/fixtures/audio/speech16k_long.wav: 16 kHz mono s16, about 64 s (over two of Whisper's
    30 s windows): the decoded sample files of make_audio_fixtures.py (their golden waveforms,
    rounded to 16 bits) one after another with half a second of silence between them, repeated.
  models/golden/automatic-speech-recognition/whisper-longform.json: a list of records like
    whisper.json's {"model", "audio", "content_type", "parameters", "output" or "error"} plus
    "generate_calls": the token ids each `model.generate` call of the pipeline returned (one call
    per chunk with chunk_length_s; a call's ids are its segments' tokens, windows after the
    first included, without decoder prompts), for diagnosis.
    Cases (16 kHz s16 files only): return_timestamps (segment level) on short audio (the seek loop: after a segment that
    ends on a timestamp pair, the window is decoded again from that timestamp), long-form audio
    (> 30 s: refused unless return_timestamps is true, because these generation configs say
    return_timestamps false, as the openai/whisper ones do), chunk_length_s with and without
    stride_length_s and timestamps (and batch_size: chunks batched through generate), beam search
    (generate_kwargs num_beams), return_timestamps inside generate_kwargs (generate predicts them, the
    answer shows only the text), do_sample and temperature where they decode greedily, return_language.
"""

import json
import os
import wave as wavelib
import warnings

import numpy as np
import torch
import transformers

ROOT = os.path.dirname(os.path.abspath(__file__))
AUDIO = os.path.join(ROOT, "fixtures", "audio")
FEATURES = os.path.join(ROOT, "golden", "audio-features")
GOLDEN = os.path.join(ROOT, "golden", "automatic-speech-recognition", "whisper-longform.json")
LONG = "speech16k_long.wav"
PARTS = ["speech16k.wav", "speech8k.wav", "tone16k.wav", "speech48k_f32.wav", "speech.ogg",
         "speech22k.mp3", "speech44k_stereo.wav"]


def make_long_file():
    silence = np.zeros(8000, dtype=np.float32)
    pieces = []
    total = 0
    while total < 64 * 16000:
        for name in PARTS:
            piece = np.load(os.path.join(FEATURES, f"{name}.wave.npy"))
            pieces += [piece, silence]
            total += len(piece) + len(silence)
            if total >= 64 * 16000:
                break
    samples = np.concatenate(pieces)[: 64 * 16000]
    s16 = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wavelib.open(os.path.join(AUDIO, LONG), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(s16.tobytes())


def read_s16(name):
    with wavelib.open(os.path.join(AUDIO, name), "rb") as f:
        assert f.getnchannels() == 1 and f.getsampwidth() == 2 and f.getframerate() == 16000, name
        data = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    return data.astype(np.float32) / 32768.0


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def record(pipe, model_name, audio, parameters):
    calls = []
    generate = pipe.model.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        sequences = out["sequences"] if isinstance(out, dict) else out
        calls.append(sequences[0].tolist())
        return out

    pipe.model.generate = recording
    rec = {"model": model_name, "audio": audio, "content_type": "audio/wave"}
    if parameters:
        rec["parameters"] = parameters
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = pipe({"raw": read_s16(audio), "sampling_rate": 16000}, **(parameters or {}))
        rec["output"] = jsonable(output)
    except Exception as error:  # noqa: BLE001 - the refusal is the golden
        rec["kind"] = "error"
        rec["error"] = f"{type(error).__name__}: {error}"
    finally:
        pipe.model.generate = generate
    rec["generate_calls"] = calls
    return rec


def cases(multilingual):
    out = [
        ("speech16k.wav", {"return_timestamps": True}),
        ("tone16k.wav", {"return_timestamps": True}),
        ("silence16k.wav", {"return_timestamps": True}),
        (LONG, None),  # refused: long-form needs timestamps
        (LONG, {"return_timestamps": False}),  # refused too
        (LONG, {"return_timestamps": True}),
        (LONG, {"return_timestamps": True, "generate_kwargs": {"max_new_tokens": 40}}),
        (LONG, {"chunk_length_s": 30}),
        (LONG, {"chunk_length_s": 30, "return_timestamps": True}),
        (LONG, {"chunk_length_s": 10}),
        (LONG, {"chunk_length_s": 10, "stride_length_s": [2, 1]}),
        (LONG, {"chunk_length_s": 10, "stride_length_s": 3, "return_timestamps": True}),
        (LONG, {"chunk_length_s": 10, "batch_size": 4}),  # chunks through generate 4 at a time
        (LONG, {"chunk_length_s": 10, "stride_length_s": 3, "return_timestamps": True, "batch_size": 4}),
        ("speech16k.wav", {"batch_size": 0}),  # refused by the DataLoader
        ("speech16k.wav", {"chunk_length_s": 2}),
        ("speech16k.wav", {"chunk_length_s": 1, "stride_length_s": 0.5}),  # refused: chunk <= 2 strides
        ("speech16k.wav", {"chunk_length_s": 2, "return_timestamps": True}),
        ("speech16k.wav", {"generate_kwargs": {"num_beams": 3}}),  # beam search
        ("tone16k.wav", {"generate_kwargs": {"num_beams": 2, "max_new_tokens": 20}}),
        ("speech16k.wav", {"generate_kwargs": {"num_beams": 3}, "return_timestamps": True}),
        (LONG, {"chunk_length_s": 15, "generate_kwargs": {"num_beams": 2}}),
        ("speech16k.wav", {"generate_kwargs": {"num_beams": 0}}),  # refused
        (LONG, {"generate_kwargs": {"return_timestamps": True}}),  # timestamps for generate only
        ("speech16k.wav", {"generate_kwargs": {"return_timestamps": True}}),
        (LONG, {"return_timestamps": False, "generate_kwargs": {"return_timestamps": True}}),  # refused
        # Whisper's generate sets do_sample from the temperature: alone it changes nothing, and a
        # list of temperatures without fallback thresholds decodes with the first
        ("speech16k.wav", {"generate_kwargs": {"do_sample": True}}),
        ("speech16k.wav", {"generate_kwargs": {"temperature": 0.0}}),
        ("speech16k.wav", {"generate_kwargs": {"temperature": [0.0, 0.2, 0.4], "do_sample": True}}),
        ("speech16k.wav", {"return_language": True}),
        ("speech16k.wav", {"return_language": True, "return_timestamps": True}),
        (LONG, {"return_language": True, "return_timestamps": True, "chunk_length_s": 20}),
    ]
    if multilingual:
        out += [
            (LONG, {"return_timestamps": True, "generate_kwargs": {"language": "fr"}}),
            (LONG, {"chunk_length_s": 15, "generate_kwargs": {"task": "translate"}}),
        ]
    return out


def main():
    make_long_file()
    records = []
    for model_name, multilingual in [("asr-whisper", True), ("asr-whisper-en", False)]:
        directory = os.path.join(ROOT, "tiny", model_name)
        pipe = transformers.pipeline(task="automatic-speech-recognition", model=directory, device=-1,
                                     feature_extractor=directory)
        for audio, parameters in cases(multilingual):
            rec = record(pipe, model_name, audio, parameters)
            print(model_name, audio, parameters, str(rec.get("output", rec.get("error")))[:150])
            records.append(rec)
    write_golden(GOLDEN, records)


def write_golden(path, records):
    with open(path, "w") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
