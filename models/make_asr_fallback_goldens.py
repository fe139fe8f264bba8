"""Goldens of Whisper's temperature fallback in the speech pipeline (issue 15): `generate_kwargs`
`temperature` (a list), `compression_ratio_threshold`, `logprob_threshold`, `no_speech_threshold`
and `condition_on_prev_tokens` false (the settings the openai/whisper model cards suggest), on the
tiny seeded Whisper models of models/make_audio_fixtures.py, as transformers 4.51.3 computes them.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, numpy), after make_audio_fixtures.py and
make_asr_longform_goldens.py:
    ~/.cache/dlc-peer/venv/bin/python models/make_asr_fallback_goldens.py
No ffmpeg is needed (the decoded waveforms are handed to the pipeline, as in
make_asr_word_timestamp_goldens.py).

The answers are deterministic: each window is decoded greedily first (temperature 0.0); where
that falls back, the next temperature is 1e-9, whose sampling picks the greedy token unless two
logits tie within about 1e-8 (the records' greedy margins are far wider). So the cases test which
windows are decoded, skipped as silence (average log-probability under `logprob_threshold` and
the no-speech probability over `no_speech_threshold`) or kept though they fail (the last
temperature's result stands), not torch's random draws.

Writes models/golden/automatic-speech-recognition/whisper-fallback.json (and
whisper-condition.json: `condition_on_prev_tokens` true, each later window's decoder prompt led by
`<|startofprev|>` and the last tokens of the segments before it, alone and with the fallback
settings, segment and word timestamps, short and long audio; "prompts" there lists each decoder
prompt `generate_with_fallback` was given): records like
whisper-longform.json's {"model", "audio", "content_type", "parameters", "output" or "error"} plus,
for diagnosis, "decisions": per window decoded, the pipeline's view of it at each temperature
tried: {"temperature", "tokens" (the generated ids, the end token included), "compression_ratio",
"avg_logprob", "no_speech_prob", "needs_fallback", "should_skip"}.
"""

import os

import torch
import transformers
from transformers.models.whisper import generation_whisper
from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

from make_asr_longform_goldens import LONG, jsonable, write_golden
from make_asr_word_timestamp_goldens import pipeline_record

ROOT = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(ROOT, "golden", "automatic-speech-recognition", "whisper-fallback.json")
CONDITION_GOLDEN = os.path.join(ROOT, "golden", "automatic-speech-recognition",
                                "whisper-condition.json")

decisions = []
prompts = []
original_generate_with_fallback = WhisperGenerationMixin.generate_with_fallback


def recording_generate_with_fallback(self, *args, **kwargs):
    prompts.extend(kwargs["decoder_input_ids"].tolist())
    return original_generate_with_fallback(self, *args, **kwargs)


WhisperGenerationMixin.generate_with_fallback = recording_generate_with_fallback
original_need_fallback = WhisperGenerationMixin._need_fallback


def recording_need_fallback(self, seek_sequence, seek_outputs, index, logits_processor,
                            generation_config, vocab_size, temperature):
    needs, skip = original_need_fallback(self, seek_sequence, seek_outputs, index, logits_processor,
                                         generation_config, vocab_size, temperature)
    entry = {"temperature": temperature, "needs_fallback": bool(needs), "should_skip": bool(skip),
             "tokens": seek_sequence.tolist()}
    entry["compression_ratio"] = self._retrieve_compression_ratio(seek_sequence, vocab_size)
    if isinstance(seek_outputs[index], dict) and "scores" in seek_outputs[index]:
        entry["avg_logprob"] = float(self._retrieve_avg_logprobs(
            seek_outputs[index]["scores"], seek_sequence, temperature))
    prob = generation_whisper._get_attr_from_logit_processors(
        logits_processor, generation_whisper.WhisperNoSpeechDetection, "no_speech_prob")
    if prob is not None:
        entry["no_speech_prob"] = float(prob[index])
    decisions.append(entry)
    return needs, skip


WhisperGenerationMixin._need_fallback = recording_need_fallback

# The model cards' settings, with 1e-9 for the fallback temperatures (see above).
CARD = {"temperature": [0.0, 1e-9], "compression_ratio_threshold": 1.35, "logprob_threshold": -1.0,
        "no_speech_threshold": 0.6, "condition_on_prev_tokens": False}


def record(pipe, model_name, audio, parameters, with_prompts=False):
    decisions.clear()
    prompts.clear()
    rec = pipeline_record(pipe, model_name, audio, parameters)
    rec["decisions"] = jsonable(decisions)
    if with_prompts:
        rec["prompts"] = list(prompts)
    return rec


def cases():
    def kwargs(**values):
        return {"generate_kwargs": values}

    out = []
    for audio in ["speech16k.wav", "tone16k.wav", "silence16k.wav", "speech44k_stereo.wav"]:
        out.append((audio, kwargs(**CARD)))
    out += [
        # thresholds that let everything through: the greedy answer
        ("speech16k.wav", kwargs(temperature=[0.0, 0.2], compression_ratio_threshold=100.0,
                                 logprob_threshold=-100.0)),
        # one temperature: a window that fails keeps its answer, or is skipped as silence
        ("speech16k.wav", kwargs(temperature=0.0, logprob_threshold=0.0, no_speech_threshold=0.0)),
        ("speech16k.wav", kwargs(temperature=0.0, logprob_threshold=0.0, no_speech_threshold=0.999)),
        ("speech16k.wav", kwargs(temperature=[0.0], compression_ratio_threshold=1.0)),
        # falling back to 1e-9: the greedy answer again
        ("speech16k.wav", kwargs(temperature=[0.0, 1e-9], compression_ratio_threshold=1.0)),
        ("speech16k.wav", kwargs(temperature=[0.0, 1e-9], logprob_threshold=0.0)),
        # no_speech_threshold without logprob_threshold: transformers 4.51.3 fails (an unbound
        # local in _need_fallback)
        ("speech16k.wav", kwargs(temperature=0.0, no_speech_threshold=0.5)),
        ("speech16k.wav", {**kwargs(**CARD), "return_timestamps": True}),
        (LONG, {**kwargs(**CARD), "return_timestamps": True}),
        (LONG, {**kwargs(**CARD), "chunk_length_s": 10}),
        (LONG, {**kwargs(**CARD), "return_timestamps": "word"}),
    ]
    return out


def conditioned_cases():
    """`condition_on_prev_tokens` true: later windows (of long audio, or a short window decoded
    again from its last timestamp pair) see the tokens before them."""
    def kwargs(**values):
        return {"generate_kwargs": {"condition_on_prev_tokens": True, **values}}

    stamps = {"return_timestamps": True}
    return [
        (LONG, {**kwargs(), **stamps}),
        (LONG, {**kwargs(num_beams=2), **stamps}),
        (LONG, {**kwargs(), "return_timestamps": "word"}),
        (LONG, {**kwargs(language="de"), **stamps}),
        (LONG, {**kwargs(max_new_tokens=40), **stamps}),
        (LONG, {**kwargs(max_new_tokens=300), **stamps}),
        (LONG, {**kwargs(temperature=[0.0, 1e-9], compression_ratio_threshold=1.35,
                         logprob_threshold=-1.0), **stamps}),
        # a window whose answer came at temperature 0.5 or above leaves the next unconditioned
        # (top_k 1: sampling picks the greedy token)
        (LONG, {**kwargs(temperature=[0.0, 0.6], top_k=1, compression_ratio_threshold=1.6),
                **stamps}),
        (LONG, {**kwargs(temperature=[0.0, 0.6], top_k=1, logprob_threshold=-0.5), **stamps}),
        (LONG, {**kwargs(**CARD | {"condition_on_prev_tokens": True}), **stamps}),
        (LONG, {**kwargs(), "chunk_length_s": 10}),
        ("speech16k.wav", {**kwargs(), **stamps}),
        ("speech44k_stereo.wav", {**kwargs(), **stamps}),
        ("speech16k.wav", kwargs()),
    ]


def main():
    records, conditioned = [], []
    for model_name in ["asr-whisper", "asr-whisper-en"]:
        directory = os.path.join(ROOT, "tiny", model_name)
        pipe = transformers.pipeline(task="automatic-speech-recognition", model=directory, device=-1,
                                     feature_extractor=directory)
        for audio, parameters in cases():
            rec = record(pipe, model_name, audio, parameters)
            print(model_name, audio, parameters, str(rec.get("output", rec.get("error")))[:100])
            for d in rec["decisions"]:
                print("   ", d)
            records.append(rec)
        for audio, parameters in conditioned_cases():
            torch.manual_seed(0)
            rec = record(pipe, model_name, audio, parameters, with_prompts=True)
            print(model_name, audio, parameters, str(rec.get("output", rec.get("error")))[:100])
            for p in rec["prompts"]:
                print("    prompt", p)
            conditioned.append(rec)
    write_golden(GOLDEN, records)
    write_golden(CONDITION_GOLDEN, conditioned)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
