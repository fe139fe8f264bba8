#!/usr/bin/env python3
"""The cost of constrained decoding: SmolLM2-135M-Instruct on /v1/chat/completions, the same
prompts with and without a JSON schema (`response_format` json_schema), in one run, at 1 and 16
concurrent clients. Generated tokens per second are summed from the answers' `usage`; every
constrained answer is checked to parse as JSON. Run after `cargo build --release` (or pass
--binary) and models/fetch_models.sh:

    python3 benches/constrained.py [--duration 15] [--binary target/release/sagemaker-hf-server]

Writes benches/results/constrained-decoding.{json,md}.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

MODEL = os.path.join(load.ROOT, "models", "smollm2-135m-instruct")
PROMPTS = ["Describe a person who lives in a big city.", "Invent a character for a short story.",
           "Who is your favourite painter, and why?", "Tell me about a friend of yours."]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 40},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 5},
    "bio": {"type": "string", "maxLength": 400}},
    "required": ["name", "age", "city", "hobbies", "bio"], "additionalProperties": False}
MAX_TOKENS = 64


def ask(port, prompt, constrained, seed):
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
            "temperature": 1.0, "seed": seed}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    choice = answer["choices"][0]
    if constrained and choice["finish_reason"] == "stop":
        json.loads(choice["message"]["content"])  # a finished constrained answer parses
    return answer["usage"]["completion_tokens"]


def measure(port, clients, constrained, duration):
    deadline = time.monotonic() + duration
    counter = iter(range(10 ** 9))

    def client(i):
        tokens = 0
        while time.monotonic() < deadline:
            n = next(counter)
            tokens += ask(port, PROMPTS[n % len(PROMPTS)], constrained, n)
        return tokens

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.monotonic() - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--binary", default=load.BINARY)
    args = parser.parse_args()
    load.BINARY = os.path.abspath(args.binary)
    port = 8931
    proc, _ = load.start_ours(MODEL, port, extra_env={"MAX_BATCH_TOKENS": "65536"})
    rows = []
    try:
        for prompt in PROMPTS:  # warm-up: the schema compiled once, cached after
            ask(port, prompt, True, 0)
            ask(port, prompt, False, 0)
        for clients in (1, 16):
            # Interleaved halves so machine noise hits both sides alike.
            free = (measure(port, clients, False, args.duration / 2) + measure(port, clients, False, args.duration / 2)) / 2
            held = (measure(port, clients, True, args.duration / 2) + measure(port, clients, True, args.duration / 2)) / 2
            rows.append({"clients": clients, "free_tokens_per_s": round(free, 1),
                         "schema_tokens_per_s": round(held, 1), "ratio": round(held / free, 3)})
            print(rows[-1], flush=True)
    finally:
        load.stop_ours(proc)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = os.path.join(load.ROOT, "benches", "results", "constrained-decoding")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "binary": os.path.relpath(load.BINARY, load.ROOT),
              "uptime": uptime, "duration_s": args.duration, "max_tokens": MAX_TOKENS, "rows": rows}
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = ["# Constrained decoding: SmolLM2-135M-Instruct, with and without a JSON schema", "",
             f"{result['date']}, {os.cpu_count()} CPUs, `{result['binary']}`, {args.duration:g} s per side and "
             f"concurrency (two interleaved halves), max_tokens {MAX_TOKENS}, sampled (temperature 1, seeded). "
             f"Load at the end: `{uptime}`.", "",
             "Command: `python3 benches/constrained.py --duration %g --binary %s`" % (args.duration, result["binary"]),
             "", "| clients | tokens/s without schema | tokens/s with schema | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['clients']} | {r['free_tokens_per_s']} | {r['schema_tokens_per_s']} | {r['ratio']}x |" for r in rows]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
