#!/usr/bin/env python3
"""Encoder-decoder load benchmark: summarization on a bart-base-sized BART (768 wide, 6 + 6
layers, random weights: speed only) with this server against the Python DLC (../shared/peer)
on the same folder, in one run. Run with the peer's venv (torch, transformers):

    ~/.cache/dlc-peer/venv/bin/python benches/load_summarization.py [--duration 15] [--beams 1]

Needs models/fetch_models.sh (the SmolLM2 tokenizer serves as the byte-level BPE), `cargo build
--release` and ../shared/peer/install-peer.sh. Every request asks for exactly --new-tokens tokens
(min_new_tokens = max_new_tokens, so both servers do the same work whatever the random weights
say); tokens/s = requests x new tokens / time, for 1, 4 and 16 clients. Writes
benches/results/load-summarization.{json,md}.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import ROOT, start_ours, start_peer, stop_ours, stop_peer  # noqa: E402
from load_generation import load, post, save  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "models", "bench", "bart-base-random")
TOKENIZER = os.path.join(ROOT, "models", "smollm2-tokenizer", "tokenizer.json")
ARTICLES = [
    "The city council met on Tuesday to discuss the new budget. After a long debate, members agreed to "
    "spend more on public transport and less on road building, a decision that drew praise from "
    "environmental groups and criticism from local businesses.",
    "Scientists have discovered a new species of frog in the rainforest. The tiny amphibian, no larger "
    "than a fingernail, was found during a survey of the region's wildlife and is thought to be "
    "critically endangered because of habitat loss.",
    "The football club announced that its manager would leave at the end of the season. The team has "
    "struggled this year, winning only four of its last fifteen matches, and the board said a change "
    "was needed to bring back the success of previous years.",
]


def make_model():
    """A bart-base-sized BartForConditionalGeneration with seeded random weights."""
    if os.path.isfile(os.path.join(MODEL_DIR, "model.safetensors")):
        return
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", model_max_length=1024)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tok), d_model=768, encoder_layers=6, decoder_layers=6,
                        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                        decoder_ffn_dim=3072, max_position_embeddings=1024, bos_token_id=0, eos_token_id=0,
                        pad_token_id=0, decoder_start_token_id=0, forced_bos_token_id=None, forced_eos_token_id=None)
    BartForConditionalGeneration(config).eval().save_pretrained(MODEL_DIR, safe_serialization=True)
    tok.save_pretrained(MODEL_DIR)


def measure(port, a, parameters):
    post(port, {"inputs": ARTICLES[0], "parameters": parameters})  # warm-up
    # (every answer holds exactly max_new_tokens tokens: min_new_tokens is the same)
    return [load(port, c, a.duration, lambda i: {"inputs": ARTICLES[i % len(ARTICLES)], "parameters": parameters},
                 lambda _: parameters["max_new_tokens"]) for c in a.conc]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--conc", default="1,4,16")
    ap.add_argument("--port", type=int, default=8195)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "load-summarization"))
    a = ap.parse_args()
    a.conc = [int(c) for c in a.conc.split(",")]
    make_model()
    parameters = {"max_new_tokens": a.new_tokens, "min_new_tokens": a.new_tokens, "num_beams": a.beams}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "duration_s": a.duration,
              "parameters": parameters, "model": os.path.relpath(MODEL_DIR, ROOT)}
    proc, ready = start_ours(MODEL_DIR, a.port, "summarization")
    try:
        result["ours"] = {"ready_s": ready, "load": measure(a.port, a, parameters)}
    finally:
        stop_ours(proc)
    print(json.dumps(result["ours"]), flush=True)
    body = json.dumps({"inputs": ARTICLES[0], "parameters": {"max_new_tokens": 2}})
    _, _, ready = start_peer(MODEL_DIR, a.port + 1, "summarization", body)
    try:
        result["dlc"] = {"ready_s": ready, "load": measure(a.port + 1, a, parameters)}
    finally:
        stop_peer(a.port + 1)
    print(json.dumps(result["dlc"]), flush=True)
    save(result, a.out, render)


def render(r):
    p = r["parameters"]
    lines = ["# Summarization: a bart-base-sized BART (random weights), ours vs the Python DLC", "",
             f"{r['date']}, {r['nproc']} CPUs, {r['duration_s']} s per concurrency, exactly "
             f"{p['max_new_tokens']} new tokens a request, num_beams {p['num_beams']}. "
             "`benches/load_summarization.py`.", "",
             "| clients | ours tokens/s | DLC tokens/s | ratio | ours p50 latency | DLC p50 latency |",
             "| --- | --- | --- | --- | --- | --- |"]
    for o, d in zip(r["ours"]["load"], r["dlc"]["load"]):
        lines.append(f"| {o['concurrency']} | {o['tokens_per_s']:.1f} | {d['tokens_per_s']:.1f} | "
                     f"{o['tokens_per_s'] / d['tokens_per_s']:.1f}x | {o['p50_latency_s']:.2f} s | "
                     f"{d['p50_latency_s']:.2f} s |")
    lines += ["", f"Ready: ours {r['ours']['ready_s']:.1f} s, the DLC {r['dlc']['ready_s']:.1f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
