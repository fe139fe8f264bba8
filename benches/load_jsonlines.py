#!/usr/bin/env python3
"""Batch transform throughput: the same records as one JSON Lines request, as JSON Lines chunks
from 2 clients (the default MaxConcurrentTransforms), and as individual requests from 16
concurrent clients, against our release binary on the real MiniLM classifier. Python standard
library only, loopback only, bounded in time (every request has a timeout; no repeat starts after
--budget seconds).

    python3 benches/load_jsonlines.py [--records 2000] [--clients 16] [--repeats 2]
                                      [--max-batch-tokens default,1024]

Needs `cargo build --release` and models/fetch_models.sh (models/minilm-l6-cls). Records are
single-string text-classification requests of 5 to 40 words. For each server setting of
MAX_BATCH_TOKENS (one server each), the modes run interleaved --repeats times after a warm-up:
records/s over wall-clock time (best and median), and the server's CPU seconds per 1000 records
(from /proc: steadier than wall-clock time on a shared machine). Each mode's answers are compared
line by line with the individual answers (byte-equal lines, largest score difference). Writes
benches/results/load-jsonlines.{md,json}.

The clients run on the same cores as the server: 16 Python client threads cost CPU that one
JSON Lines request does not.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "sagemaker-hf-server")
RESULTS = os.path.join(ROOT, "benches", "results")
WORDS = ("the service was quick and friendly but the food arrived cold and the room was noisy "
         "I would still recommend this place to anyone who likes simple honest cooking at a fair "
         "price although the wine list could be longer and the desserts were a little too sweet").split()


def records(n):
    """`n` single-string requests of 5 to 40 words, deterministic."""
    out = []
    for i in range(n):
        length = 5 + (i * 7) % 36
        words = [WORDS[(i * 13 + k * 5) % len(WORDS)] for k in range(length)]
        out.append({"inputs": f"Review {i}: " + " ".join(words)})
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, body, content_type="application/json", timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {data[:300]!r}")
    return data


def start(model, port, max_batch_tokens=None):
    env = dict(os.environ, HF_MODEL_ID=model, SAGEMAKER_BIND_TO_PORT=str(port), SERVER_BIND_ADDRESS="127.0.0.1",
               RUST_LOG="warn")
    if max_batch_tokens:
        env["MAX_BATCH_TOKENS"] = str(max_batch_tokens)
    proc = subprocess.Popen([BINARY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            raise RuntimeError("the server did not become ready")
        time.sleep(0.01)


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def json_lines(port, batch):
    body = "".join(json.dumps(r) + "\n" for r in batch).encode()
    return request(port, body, "application/jsonlines").decode().splitlines()


def chunked(port, batch, clients, per_request):
    chunks = [batch[i:i + per_request] for i in range(0, len(batch), per_request)]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda c: json_lines(port, c), chunks))
    return [line for a in answers for line in a]


def individual(port, batch, clients):
    """`clients` threads, each with one keep-alive connection, share the records."""
    bodies = [json.dumps(r).encode() for r in batch]
    answers = [None] * len(bodies)

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for i in range(k, len(bodies), clients):
            conn.request("POST", "/invocations", body=bodies[i], headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}: {data[:300]!r}")
            answers[i] = data.decode()
        conn.close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return answers


def scores(line):
    """The floats of an answer line, in order."""
    out = []

    def walk(v):
        if isinstance(v, float):
            out.append(v)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
    walk(json.loads(line))
    return out


def compare(lines, singles):
    """(byte-equal lines, largest score difference) between two answers' lines."""
    equal = sum(1 for x, y in zip(lines, singles) if x == y)
    largest = max((abs(a - b) for x, y in zip(lines, singles) for a, b in zip(scores(x), scores(y))), default=0.0)
    return equal, largest


def run_budget(a, batch, budget, deadline):
    """Every mode on one server, the modes interleaved in each repeat (the machine's load moves)."""
    port = free_port()
    proc = start(a.model, port, budget)
    modes = {"one JSON Lines request": lambda: json_lines(port, batch),
             f"JSON Lines, {a.chunk} records a request, 2 clients": lambda: chunked(port, batch, 2, a.chunk),
             f"individual requests, {a.clients} clients": lambda: individual(port, batch, a.clients)}
    times = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    answers = {}
    try:
        json_lines(port, batch[:200])  # warm-up
        individual(port, batch[:200], a.clients)
        for _ in range(a.repeats):
            for mode, run in modes.items():
                if time.monotonic() > deadline:
                    break
                c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                answers[mode] = run()
                times[mode].append(time.perf_counter() - t0)
                c1 = cpu_seconds(proc.pid)
                if c0 is not None and c1 is not None:
                    cpu[mode].append(c1 - c0)
    finally:
        stop(proc)
    singles = answers.get(f"individual requests, {a.clients} clients", [])
    rows = []
    for mode in modes:
        t = times[mode]
        equal, largest = compare(answers.get(mode, []), singles)
        rows.append({"max_batch_tokens": budget or "default", "mode": mode, "runs": len(t), "seconds": t,
                     "best_records_per_s": a.records / min(t) if t else None,
                     "median_records_per_s": a.records / statistics.median(t) if t else None,
                     "server_cpu_s_per_1000": 1000 * min(cpu[mode]) / a.records if cpu[mode] else None,
                     "equal_to_individual": equal, "largest_difference": largest})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "models", "minilm-l6-cls"))
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--chunk", type=int, default=250, help="records per request in the chunked mode")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-batch-tokens", default="default,1024",
                   help="server MAX_BATCH_TOKENS settings to run, comma-separated (default: the server's)")
    p.add_argument("--budget", type=float, default=900, help="seconds for the whole run")
    a = p.parse_args()
    if not os.path.isfile(BINARY):
        sys.exit(f"{BINARY} is missing: cargo build --release")
    deadline = time.monotonic() + a.budget
    batch = records(a.records)
    load_before = os.getloadavg()
    rows = []
    for budget in a.max_batch_tokens.split(","):
        rows += run_budget(a, batch, None if budget == "default" else int(budget), deadline)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "machine": platform.machine(),
              "load_average_before_after": [load_before[0], os.getloadavg()[0]],
              "model": os.path.relpath(a.model, ROOT), "records": a.records, "clients": a.clients, "modes": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "load-jsonlines.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_markdown(result, " ".join(["python3", "benches/load_jsonlines.py"] + sys.argv[1:]))
    print(open(os.path.join(RESULTS, "load-jsonlines.md")).read())


def write_markdown(result, command):
    load = result["load_average_before_after"]
    lines = [f"JSON Lines run {result['date']}, {result['cpus']} CPUs (1-minute load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after), model `{result['model']}`, {result['records']} single-string "
             f"text-classification records of 5-40 words. Command: `{command}`.", "",
             "| MAX_BATCH_TOKENS | mode | runs | best records/s | median records/s | vs individual (median) "
             "| server CPU s / 1000 records | lines equal to individual | largest difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["modes"]:
        single = next(x for x in result["modes"] if x["max_batch_tokens"] == r["max_batch_tokens"]
                      and x["mode"].startswith("individual"))
        if not r["runs"]:
            lines.append(f"| {r['max_batch_tokens']} | {r['mode']} | 0 | - | - | - | - | - | - |")
            continue
        ratio = r["median_records_per_s"] / single["median_records_per_s"] if single["runs"] else float("nan")
        cpu = f"{r['server_cpu_s_per_1000']:.2f}" if r["server_cpu_s_per_1000"] is not None else "-"
        lines.append(f"| {r['max_batch_tokens']} | {r['mode']} | {r['runs']} | {r['best_records_per_s']:.0f} | "
                     f"{r['median_records_per_s']:.0f} | {ratio:.2f}x | {cpu} | "
                     f"{r['equal_to_individual']} of {result['records']} | {r['largest_difference']:.1e} |")
    lines.append("")
    with open(os.path.join(RESULTS, "load-jsonlines.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
