#!/usr/bin/env python3
"""GGUF text generation: this server (release build, over HTTP) against llama.cpp
(llama-cpp-python from PyPI, in process, no HTTP) on the same GGUF file and the same cores, in one
run. Run with a Python that has llama-cpp-python and tokenizers (`pip install llama-cpp-python
tokenizers`; it builds llama.cpp from source):

    python benches/gguf_vs_llama_cpp.py [--model-dir models/smollm2-135m-instruct] [--threads 2]
        [--duration 20] [--new-tokens 64] [--rounds 2] [--out benches/results/gguf]

Both generate greedily from the same prompts, one after another for `duration` seconds:
- single stream: ours one client; llama.cpp `create_completion` (n_threads = --threads, the
  machine's cores by default), tokens/s over generated tokens (each side counts its own tokens:
  the server's answers through the model's tokenizer, llama.cpp's `usage.completion_tokens`);
- 16 concurrent streams: ours 16 clients (llama-cpp-python's `Llama` runs one stream at a time;
  the target is 3x its single-stream figure);
- time to first token: ours the first server-sent event of a streamed request, llama.cpp the first
  streamed chunk (prompt processing included in both), median of 5.
Rounds alternate ours and llama.cpp so that both see the same machine; `uptime` is recorded.
On CPUs with AMX tiles llama.cpp repacks Q4_1 for its AMX buffer type (about twice its other
CPU path's decode speed here), but llama-cpp-python 0.3.36's AMX matmul dies of a general
protection fault (ldtilecfg) on batches of several tokens: there prompts go in one token at a
time (--n-batch 1, the default on such CPUs), which keeps its faster decoding.
Writes OUT.json and OUT.md.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import ROOT, start_ours, stop_ours  # noqa: E402
from load_generation import PROMPTS, post  # noqa: E402


def ours(model_dir, a, count_tokens, port, env):
    proc, ready = start_ours(model_dir, port, extra_env=env)
    try:
        post(port, {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 8}})  # warm-up
        ttft = statistics.median(
            post(port, {"inputs": PROMPTS[i % len(PROMPTS)], "parameters": {"max_new_tokens": 4}, "stream": True},
                 stream=True)[1] for i in range(5))
        result = {"ready_s": ready, "ttft_s": ttft}
        parameters = {"max_new_tokens": a.new_tokens, "return_full_text": False}
        for clients in (1, 16):
            deadline = time.time() + a.duration

            def client(k):
                tokens, i = 0, k
                while time.time() < deadline:
                    answer, _, _ = post(port, {"inputs": PROMPTS[i % len(PROMPTS)], "parameters": parameters})
                    tokens += count_tokens(answer[0]["generated_text"])
                    i += 1
                return tokens

            t0 = time.time()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                tokens = sum(pool.map(client, range(clients)))
            result[f"tokens_per_s_{clients}"] = tokens / (time.time() - t0)
        return result
    finally:
        stop_ours(proc)


def llama_cpp(path, a):
    from llama_cpp import Llama
    t0 = time.monotonic()
    llm = Llama(model_path=path, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, n_batch=a.n_batch,
                n_ubatch=a.n_batch, verbose=False, seed=0)
    result = {"ready_s": time.monotonic() - t0}
    greedy = dict(temperature=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0)
    llm.create_completion(PROMPTS[0], max_tokens=8, **greedy)  # warm-up
    firsts = []
    for i in range(5):
        t = time.perf_counter()
        for _ in llm.create_completion(PROMPTS[i % len(PROMPTS)], max_tokens=4, stream=True, **greedy):
            firsts.append(time.perf_counter() - t)
            break
    result["ttft_s"] = statistics.median(firsts)
    tokens, i, t0 = 0, 0, time.time()
    while time.time() - t0 < a.duration:
        out = llm.create_completion(PROMPTS[i % len(PROMPTS)], max_tokens=a.new_tokens, **greedy)
        tokens += out["usage"]["completion_tokens"]
        i += 1
    result["tokens_per_s_1"] = tokens / (time.time() - t0)
    del llm
    return result


def amx():
    """Whether the CPU has AMX int8 tiles (see the notes on --n-batch)."""
    try:
        return "amx_int8" in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models", "smollm2-135m-instruct"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=8193)
    ap.add_argument("--n-batch", type=int, default=1 if amx() else 512, help="llama.cpp's prompt batch")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for our server")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "gguf"))
    a = ap.parse_args()
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    gguf = glob.glob(os.path.join(a.model_dir, "*.gguf"))[0]
    env = dict(kv.split("=", 1) for kv in a.env)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "threads": a.threads,
              "gguf": os.path.relpath(gguf, ROOT), "duration_s": a.duration, "new_tokens": a.new_tokens,
              "env": env, "llama_cpp_n_batch": a.n_batch, "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "rounds": []}
    for r in range(a.rounds):
        o = ours(a.model_dir, a, lambda t: len(tokenizer.encode(t, add_special_tokens=False).ids), a.port, env)
        print("ours", json.dumps(o), flush=True)
        ll = llama_cpp(gguf, a)
        print("llama.cpp", json.dumps(ll), flush=True)
        result["rounds"].append({"ours": o, "llama_cpp": ll})
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    json.dump(result, open(a.out + ".json", "w"), indent=1)
    md = render(result)
    open(a.out + ".md", "w").write(md)
    print(md)


def render(r):
    best = lambda side, key: max(x[side][key] for x in r["rounds"])  # noqa: E731
    low = lambda side, key: min(x[side][key] for x in r["rounds"])  # noqa: E731
    single, single_ll = best("ours", "tokens_per_s_1"), best("llama_cpp", "tokens_per_s_1")
    multi = best("ours", "tokens_per_s_16")
    lines = [f"# GGUF generation: ours vs llama.cpp (`{r['gguf']}`)", "",
             f"{r['date']}, {r['nproc']} CPUs, llama.cpp n_threads {r['threads']}, {r['duration_s']} s per figure, "
             f"{r['new_tokens']} greedy tokens a request, {len(r['rounds'])} rounds alternating (best round shown; "
             f"every round in the .json). Our env: {r['env'] or 'defaults'}. llama.cpp n_batch "
             f"{r.get('llama_cpp_n_batch', 512)}.",
             f"Load: before `{r['uptime_before']}`, after `{r['uptime_after']}`.", "",
             "| figure | ours | llama.cpp | ratio |", "| --- | --- | --- | --- |",
             f"| tokens/s, 1 stream | {single:.1f} | {single_ll:.1f} | {single / single_ll:.2f}x |",
             f"| tokens/s, 16 streams | {multi:.1f} | (1 stream: {single_ll:.1f}) | {multi / single_ll:.2f}x |",
             f"| time to first token | {low('ours', 'ttft_s') * 1000:.0f} ms | {low('llama_cpp', 'ttft_s') * 1000:.0f} ms | "
             f"{low('ours', 'ttft_s') / low('llama_cpp', 'ttft_s'):.2f}x |", "",
             "Command: `" + " ".join(["python", "benches/gguf_vs_llama_cpp.py"] + sys.argv[1:]) + "`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
