#!/usr/bin/env python3
"""Text-generation load benchmark: this server on the SmolLM2-135M-Instruct GGUF against the
Python DLC (../shared/peer) serving the same weights dequantized to a transformers checkpoint, in
one run. Run with the peer's venv (it has torch, transformers, gguf and tokenizers):

    ~/.cache/dlc-peer/venv/bin/python benches/load_generation.py [--duration 20] [--new-tokens 64]

Needs models/fetch_models.sh, `cargo build --release`, and ../shared/peer/install-peer.sh
(+ `pip install gguf accelerate` in its venv for the one-time export of the dequantized model to
models/bench/smollm2-135m-hf/). For 1, 4 and 16 concurrent clients, each sending one prompt after
another ({"inputs": prompt, "parameters": {"max_new_tokens": N, "return_full_text": false}}):
total generated tokens per second (counted with the model's tokenizer on the answers; greedy
answers are the same on both servers) and the median request latency. Time to first token at one
client: ours is the first server-sent event of a streamed request; the DLC cannot stream, so its
first token is the latency of the same request with max_new_tokens 1 (ours is measured that way
too). Writes benches/results/load-generation.{json,md}.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import PEER_KIT, ROOT, start_ours, start_peer, stop_ours, stop_peer  # noqa: E402

GGUF_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
HF_DIR = os.path.join(ROOT, "models", "bench", "smollm2-135m-hf")
PROMPTS = ["Once upon a time", "The capital of France is", "Write a short poem about the sea.",
           "Explain what a neural network is in simple terms.", "def fibonacci(n):",
           "The three most important things in life are"]


def export_dequantized():
    """The GGUF's weights as transformers dequantizes them, saved as a safetensors checkpoint."""
    if os.path.isfile(os.path.join(HF_DIR, "model.safetensors")):
        return
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 torch_dtype=torch.float32)
    model.save_pretrained(HF_DIR, safe_serialization=True)
    config = json.load(open(os.path.join(GGUF_DIR, "tokenizer_config.json")))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(GGUF_DIR, "tokenizer.json"),
                                  **{k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    tok.chat_template = open(os.path.join(GGUF_DIR, "chat_template.jinja")).read()
    tok.save_pretrained(HF_DIR)


def post(port, body, stream=False):
    """Returns (answer JSON or None, seconds to the first byte of the body, total seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/invocations", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if stream:
        first = None
        while True:
            line = r.readline()
            if not line:
                break
            if line.startswith(b"data:") and first is None:
                first = time.perf_counter() - t0
        conn.close()
        return None, first, time.perf_counter() - t0
    data = r.read()
    conn.close()
    assert r.status == 200, (r.status, data[:300])
    return json.loads(data), None, time.perf_counter() - t0


def load(port, concurrency, seconds, request, count_tokens):
    """`concurrency` clients send `request(i)` bodies one after another for `seconds`;
    `count_tokens(answer)`: the tokens an answer holds."""
    deadline = time.time() + seconds

    def client(k):
        tokens, latencies, i = 0, [], k
        while time.time() < deadline:
            answer, _, took = post(port, request(i))
            i += 1
            tokens += count_tokens(answer)
            latencies.append(took)
        return tokens, latencies

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(client, range(concurrency)))
    elapsed = time.time() - t0
    latencies = [x for _, lat in results for x in lat]
    return {"concurrency": concurrency, "tokens_per_s": sum(t for t, _ in results) / elapsed,
            "requests": len(latencies), "p50_latency_s": statistics.median(latencies)}


def first_token(port, stream, repeats=5):
    times = []
    for i in range(repeats):
        body = {"inputs": PROMPTS[i % len(PROMPTS)], "parameters": {"max_new_tokens": 1 if not stream else 16}}
        if stream:
            body["stream"] = True
        _, first, total = post(port, body, stream=stream)
        times.append(first if stream else total)
    return statistics.median(times)


def measure(port, a, count_tokens, stream):
    post(port, {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 8}})  # warm-up
    result = {"ttft_1_token_request_s": first_token(port, stream=False)}
    if stream:
        result["ttft_stream_s"] = first_token(port, stream=True)
    parameters = {"max_new_tokens": a.new_tokens, "return_full_text": False}
    result["load"] = [load(port, c, a.duration, lambda i: {"inputs": PROMPTS[i % len(PROMPTS)], "parameters": parameters},
                           lambda answer: count_tokens(answer[0]["generated_text"])) for c in a.conc]
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--conc", default="1,4,16")
    ap.add_argument("--port", type=int, default=8191)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "load-generation"))
    a = ap.parse_args()
    a.conc = [int(c) for c in a.conc.split(",")]
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(GGUF_DIR, "tokenizer.json"))

    def count_tokens(text):
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "duration_s": a.duration,
              "new_tokens": a.new_tokens, "prompts": PROMPTS}
    proc, ready = start_ours(GGUF_DIR, a.port)
    try:
        result["ours"] = dict(ready_s=ready, **measure(a.port, a, count_tokens, stream=True))
    finally:
        stop_ours(proc)
    print(json.dumps(result["ours"]), flush=True)
    if not a.skip_peer:
        export_dequantized()
        body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 1}})
        _, _, ready = start_peer(HF_DIR, a.port + 1, "text-generation", body)
        try:
            result["dlc"] = dict(ready_s=ready, **measure(a.port + 1, a, count_tokens, stream=False))
        finally:
            stop_peer(a.port + 1)
        print(json.dumps(result["dlc"]), flush=True)
    save(result, a.out, render)


def save(result, out, render):
    """`out`.json (the measurements) and `out`.md (their table), and the table on stdout."""
    json.dump(result, open(out + ".json", "w"), indent=1)
    open(out + ".md", "w").write(render(result))
    print(render(result))


def render(r):
    lines = [f"# Text generation: SmolLM2-135M-Instruct, ours (GGUF) vs the Python DLC (dequantized)",
             "", f"{r['date']}, {r['nproc']} CPUs, {r['duration_s']} s per concurrency, "
             f"max_new_tokens {r['new_tokens']}, greedy. `benches/load_generation.py`.", "",
             "| clients | ours tokens/s | DLC tokens/s | ratio | ours p50 latency | DLC p50 latency |",
             "| --- | --- | --- | --- | --- | --- |"]
    dlc = {x["concurrency"]: x for x in r.get("dlc", {}).get("load", [])}
    for x in r["ours"]["load"]:
        d = dlc.get(x["concurrency"])
        lines.append(f"| {x['concurrency']} | {x['tokens_per_s']:.1f} | "
                     + (f"{d['tokens_per_s']:.1f} | {x['tokens_per_s'] / d['tokens_per_s']:.1f}x | " if d else "- | - | ")
                     + f"{x['p50_latency_s']:.2f} s | " + (f"{d['p50_latency_s']:.2f} s |" if d else "- |"))
    o, d = r["ours"], r.get("dlc")
    lines += ["", f"Time to first token, one client: ours {o['ttft_stream_s'] * 1e3:.0f} ms (first streamed "
              f"event), {o['ttft_1_token_request_s'] * 1e3:.0f} ms (a max_new_tokens 1 request)"
              + (f"; the DLC {d['ttft_1_token_request_s'] * 1e3:.0f} ms (a max_new_tokens 1 request; it cannot "
                 f"stream): {o['ttft_stream_s'] / d['ttft_1_token_request_s']:.2f} of its time." if d else "."),
              "", f"Ready: ours {o['ready_s']:.1f} s" + (f", the DLC {d['ready_s']:.1f} s." if d else ".")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
