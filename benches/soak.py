#!/usr/bin/env python3
"""Soak test: many clients for a long time (default 10 minutes) against one or more servers, a
mix of valid requests, malformed ones and clients that go away mid-request or mid-stream.
Reports unexpected statuses (errors), p50/p99 latency per kind of request, and each server's
RSS (VmRSS from /proc/PID/status) over time with a /ping taken at each sample, as a Markdown
file in benches/results/.

usage: benches/soak.py [--model DIR]... [--duration 600] [--threads 8] [--out benches/results/soak]
       benches/soak.py --url http://127.0.0.1:8080 --pid PID --kind classification|generation
  --model DIR   start a server on DIR (repeatable; default models/minilm-l6-cls) with
                target/release/sagemaker-hf-server, else target/debug/sagemaker-hf-server;
                the request mix follows the model: classification (text-classification
                models), or generation (config.json architectures *ForCausalLM /
                *ForConditionalGeneration: plain, list, streamed and abandoned streams)
  --url/--pid   a server already running (its PID for RSS; without it RSS is not sampled)
Python 3 standard library only. Loopback only; bounded in time (every client has a timeout).
"""
import argparse
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_TIMEOUT = 120
WORDS = ("the film was wonderful and I loved every minute of it but the ending felt rushed "
         "a terrible waste of time with wooden acting and no plot whatsoever though the music "
         "was fine quiet calm moving brilliant awful service food price great again never").split()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sentence(rng, low=4, high=24):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


# --- HTTP clients -------------------------------------------------------------------------------

def post(target, body, content_type="application/json", accept=None, read=True):
    """(status, body bytes) of one POST /invocations on a fresh connection."""
    conn = http.client.HTTPConnection(target["host"], target["port"], timeout=CLIENT_TIMEOUT)
    try:
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", "/invocations", body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read() if read else b""
    finally:
        conn.close()


def get(target, path, timeout=CLIENT_TIMEOUT):
    conn = http.client.HTTPConnection(target["host"], target["port"], timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw(target, data, read_reply=False):
    """Writes `data` on a socket and closes it (a client that goes away); with `read_reply`, ends
    its side (a request cut short stays one: no header read timeout would answer it) and returns
    the status of whatever comes back first, or "closed"."""
    with socket.create_connection((target["host"], target["port"]), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(data)
        if not read_reply:
            return "sent"
        try:
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(64)
        except OSError:  # (the server answered and closed first, or reset the connection)
            return "closed"
        m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
        return int(m.group(1)) if m else "closed"


def request_bytes(body, content_type="application/json", declared_length=None):
    length = len(body) if declared_length is None else declared_length
    head = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    return head + body


def stream(target, body, events_before_leaving=None):
    """A streamed generation: (status, events read); leaves after `events_before_leaving`."""
    conn = http.client.HTTPConnection(target["host"], target["port"], timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", "/invocations", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return response.status, 0
        events = 0
        while True:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                events += 1
                if events_before_leaving is not None and events >= events_before_leaving:
                    break  # (the connection closes below: the client is gone mid-stream)
        return 200, events
    finally:
        conn.close()


# --- the request mix ----------------------------------------------------------------------------
# Each scenario: (name, weight, expected statuses, function(target, rng) -> status or outcome).

def expect_list_of(n):
    def check(status, body):
        if status == 200:
            value = json.loads(body)
            if not isinstance(value, list) or len(value) != n:
                raise ValueError(f"expected a list of {n}, got {body[:200]!r}")
        return status
    return check


def classify_one(t, rng):
    status, body = post(t, {"inputs": sentence(rng)})
    return expect_list_of(1)(status, body)


def classify_batch(t, rng):
    n = rng.randint(2, 32)
    status, body = post(t, {"inputs": [sentence(rng) for _ in range(n)]})
    return expect_list_of(n)(status, body)


def classify_truncated(t, rng):
    status, body = post(t, {"inputs": sentence(rng, 600, 900), "parameters": {"truncation": True, "top_k": 2}})
    return status


def classify_json_lines(t, rng):
    n = rng.randint(2, 8)
    lines = "\n".join(json.dumps({"inputs": sentence(rng)}) for _ in range(n)).encode()
    status, body = post(t, lines, content_type="application/jsonlines")
    if status == 200 and len(body.splitlines()) != n:
        raise ValueError(f"expected {n} lines, got {body[:200]!r}")
    return status


def classify_csv(t, rng):
    rows = "\r\n".join(sentence(rng).replace(",", " ") for _ in range(rng.randint(1, 6)))
    status, _ = post(t, f"inputs\r\n{rows}\r\n".encode(), content_type="text/csv", accept="text/csv")
    return status


def too_long(t, rng):
    return post(t, {"inputs": sentence(rng, 1500, 2000)})[0]


def generate(t, rng):
    body = {"inputs": sentence(rng, 3, 8), "parameters": {"max_new_tokens": rng.randint(4, 16)}}
    return expect_list_of(1)(*post(t, body))


def generate_list(t, rng):
    n = rng.randint(2, 4)
    body = {"inputs": [sentence(rng, 3, 8) for _ in range(n)],
            "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": rng.randint(0, 99)}}
    return expect_list_of(n)(*post(t, body))


def generate_stream(t, rng):
    status, events = stream(t, {"inputs": sentence(rng, 3, 8), "stream": True,
                                "parameters": {"max_new_tokens": rng.randint(4, 16)}})
    if status == 200 and events == 0:
        raise ValueError("a stream without events")
    return status


def leave_mid_stream(t, rng):
    body = {"inputs": sentence(rng, 3, 8), "stream": True, "parameters": {"max_new_tokens": 32}}
    status, _ = stream(t, body, events_before_leaving=rng.randint(1, 3))
    return status


def generation_bad_parameters(t, rng):
    parameters = rng.choice([{"num_return_sequences": 0}, {"temperature": "hot"}, {"top_p": 7},
                             {"max_new_tokens": -1}, {"min_new_tokens": 50, "max_new_tokens": 5},
                             {"assistant_model": "gpt2"}])
    return post(t, {"inputs": "Hello", "parameters": parameters})[0]


def malformed_json(t, rng):
    body = rng.choice([b'{"inputs": "a"', b"{inputs: 1}", b"\xff\xfe", b"", b"[" * 5000, b"null"])
    return post(t, body)[0]


def wrong_types(t, rng):
    body = rng.choice([{"inputs": 5}, {"inputs": [1, 2]}, {"inputs": "a", "parameters": []},
                       {"inputs": "a", "parameters": {"no_such_parameter": 1}}, ["inputs"]])
    return post(t, body)[0]


def unsupported_content_type(t, rng):
    return post(t, b"hello", content_type="text/plain")[0]


def leave_mid_body(t, rng):
    body = json.dumps({"inputs": sentence(rng)}).encode()
    return raw(t, request_bytes(body[: len(body) // 2], declared_length=len(body)))


def leave_before_answer(t, rng):
    texts = [sentence(rng) for _ in range(rng.randint(8, 64))]
    return raw(t, request_bytes(json.dumps({"inputs": texts}).encode()))


def leave_before_generation(t, rng):
    body = {"inputs": sentence(rng, 3, 8), "parameters": {"max_new_tokens": 32}}
    return raw(t, request_bytes(json.dumps(body).encode()))


def garbage(t, rng):
    data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))
    return raw(t, data, read_reply=True)


def ping(t, rng):
    return get(t, "/ping")[0]


COMMON = [
    ("malformed JSON", 4, {400}, malformed_json),
    ("wrong types / unknown parameter", 4, {400}, wrong_types),
    ("unsupported Content-Type", 1, {400}, unsupported_content_type),
    ("leaves mid-body", 2, {"sent"}, leave_mid_body),
    ("garbage bytes", 1, {400, "closed"}, garbage),
    ("GET /ping", 2, {200}, ping),
]
MIXES = {
    "classification": [
        ("classify one text", 20, {200}, classify_one),
        ("classify 2-32 texts", 10, {200}, classify_batch),
        ("classify 600-900 words, truncation", 3, {200}, classify_truncated),
        ("JSON Lines 2-8 records", 4, {200}, classify_json_lines),
        ("CSV in, CSV out", 3, {200}, classify_csv),
        ("too long, no truncation", 2, {400}, too_long),
        ("leaves before the answer", 2, {"sent"}, leave_before_answer),
    ] + COMMON,
    "generation": [
        ("generate", 10, {200}, generate),
        ("generate 2-4 prompts, sampled", 4, {200}, generate_list),
        ("stream", 8, {200}, generate_stream),
        ("leaves mid-stream", 4, {200}, leave_mid_stream),
        ("leaves before the answer", 2, {"sent"}, leave_before_generation),
        ("bad generation parameters", 4, {400}, generation_bad_parameters),
    ] + COMMON,
}


# --- servers ------------------------------------------------------------------------------------

def binary():
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "sagemaker-hf-server")
        if os.path.exists(path):
            return path, profile
    sys.exit("no target/release or target/debug sagemaker-hf-server: cargo build first")


def kind_of(model_dir):
    if any(name.endswith(".gguf") for name in os.listdir(model_dir)):
        return "generation"  # (GGUF files hold decoder-only language models)
    with open(os.path.join(model_dir, "config.json")) as f:
        architectures = json.load(f).get("architectures") or [""]
    return "generation" if re.search(r"(CausalLM|ConditionalGeneration|LMHeadModel)$", architectures[0]) else "classification"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, log_dir, index):
    path, profile = binary()
    port = free_port()
    log_path = os.path.join(log_dir, f"server{index}.log")
    env = dict(os.environ, HF_MODEL_ID=model_dir, SAGEMAKER_BIND_TO_PORT=str(port),
               SERVER_BIND_ADDRESS="127.0.0.1", RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([path], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    target = {"host": "127.0.0.1", "port": port, "pid": process.pid, "process": process,
              "model": os.path.relpath(model_dir, ROOT), "kind": kind_of(model_dir),
              "log": log_path, "profile": profile}
    started = time.time()
    while time.time() - started < 600:
        if process.poll() is not None:
            sys.exit(f"server for {model_dir} exited with {process.returncode}: see {log_path}")
        try:
            if get(target, "/ping", timeout=2)[0] == 200:
                target["ready_s"] = time.time() - started
                return target
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"server for {model_dir} not ready in 600 s")


def stop_server(target):
    """SIGTERM, then how long the drain took and the exit status."""
    process = target["process"]
    started = time.time()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        code = "killed after 60 s"
    return code, time.time() - started


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)), int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
    except (OSError, AttributeError):
        return None, None


# --- the run ------------------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_scenario = {}  # (server index, name) -> {"count", "errors", "latencies", "outcomes"}
        self.errors = []

    def record(self, key, latency, outcome, error=None):
        with self.lock:
            s = self.by_scenario.setdefault(key, {"count": 0, "errors": 0, "latencies": [], "outcomes": {}})
            s["count"] += 1
            s["latencies"].append(latency)
            s["outcomes"][str(outcome)] = s["outcomes"].get(str(outcome), 0) + 1
            if error:
                s["errors"] += 1
                if len(self.errors) < 50:
                    self.errors.append(f"{key[1]} (server {key[0]}): {error}")


def client(targets, stats, deadline, seed):
    rng = random.Random(seed)
    while time.time() < deadline:
        index = rng.randrange(len(targets))
        target = targets[index]
        mix = MIXES[target["kind"]]
        name, _, expected, run = rng.choices(mix, weights=[m[1] for m in mix])[0]
        started = time.time()
        try:
            outcome = run(target, rng)
            error = None if outcome in expected else f"got {outcome}, expected {sorted(map(str, expected))}"
        except Exception as e:  # noqa: BLE001 (any failure of a client is what we report)
            outcome, error = type(e).__name__, f"{type(e).__name__}: {e}"
        stats.record((index, name), time.time() - started, outcome, error)


def sampler(targets, samples, deadline, interval):
    started = time.time()
    while True:
        for index, target in enumerate(targets):
            rss, hwm = rss_kib(target["pid"]) if target.get("pid") else (None, None)
            t0 = time.time()
            try:
                status = get(target, "/ping", timeout=30)[0]
            except OSError as e:
                status = type(e).__name__
            samples.append({"server": index, "t": time.time() - started, "rss_kib": rss, "hwm_kib": hwm,
                            "ping": status, "ping_ms": (time.time() - t0) * 1000})
        if time.time() >= deadline:
            return
        time.sleep(max(0.0, min(interval, deadline - time.time())))


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def report(args, targets, stats, samples, elapsed, shutdowns, load_before, load_after):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    total = sum(s["count"] for s in stats.by_scenario.values())
    errors = sum(s["errors"] for s in stats.by_scenario.values())
    lines = [f"# Soak: {', '.join(t['model'] for t in targets)}", ""]
    lines.append(f"Command: `{shlex.join(['benches/soak.py'] + sys.argv[1:])}` (commit {commit}, "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).")
    if args.duration < 600:
        lines.append(f"Shortened: ran {args.duration:.0f} s instead of the default 600 s (`--duration {args.duration:g}`).")
    lines.append(f"{args.threads} client threads, {total} requests in {elapsed:.0f} s "
                 f"({total / elapsed:.1f}/s), **{errors} errors** (an unexpected status or a client failure).")
    lines.append(f"Machine: {os.cpu_count()} CPUs, load average {load_before:.1f} before and {load_after:.1f} after "
                 "the run; shared with other builds and tests, so latencies and throughput are noisy: "
                 "read them as an order of magnitude, and the errors and RSS trend as the result.")
    lines += [f"Note: {note}" for note in args.note]
    for index, t in enumerate(targets):
        where = f"{t['profile']} build, started by the script, ready in {t['ready_s']:.1f} s" if "process" in t else "already running"
        lines.append(f"- server {index}: `{t['model']}` ({t['kind']} mix), {where}.")
    lines += ["", "## Requests", "",
              "| server | kind of request | count | errors | p50 ms | p99 ms | outcomes |",
              "|---|---|---:|---:|---:|---:|---|"]
    for (index, name), s in sorted(stats.by_scenario.items()):
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(s["outcomes"].items()))
        lines.append(f"| {index} | {name} | {s['count']} | {s['errors']} | {percentile(s['latencies'], 50) * 1000:.0f} "
                     f"| {percentile(s['latencies'], 99) * 1000:.0f} | {outcomes} |")
    valid = [x for (i, n), s in stats.by_scenario.items() for x in s["latencies"]
             if 200 in next(m[2] for m in MIXES[targets[i]["kind"]] if m[0] == n)]
    lines += ["", f"Requests expecting 200, all together: p50 {percentile(valid, 50) * 1000:.0f} ms, "
              f"p99 {percentile(valid, 99) * 1000:.0f} ms ({len(valid)} requests)."]
    if stats.errors:
        lines += ["", "## Errors (first 50)", ""] + [f"- {e}" for e in stats.errors]
    lines += ["", "## RSS over time (VmRSS of the server process) and /ping"]
    for index in range(len(targets)):
        rows = [s for s in samples if s["server"] == index]
        lines += ["", f"Server {index}:", "", "| t (s) | RSS MiB | peak RSS MiB | /ping | /ping ms |",
                  "|---:|---:|---:|---|---:|"]
        step = max(1, len(rows) // 20)
        for s in rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else []):
            lines.append(f"| {s['t']:.0f} | {mib(s['rss_kib'])} | {mib(s['hwm_kib'])} | {s['ping']} | {s['ping_ms']:.0f} |")
        measured = [s["rss_kib"] for s in rows if s["rss_kib"]]
        if measured:
            lines += ["", f"RSS {mib(measured[0])} MiB at the first sample, {mib(measured[-1])} MiB at the last, "
                      f"{mib(max(measured))} MiB at most; slowest /ping {max(s['ping_ms'] for s in rows):.0f} ms; "
                      f"pings not 200: {sum(1 for s in rows if s['ping'] != 200)}."]
    lines.append("")
    for index, (code, seconds) in shutdowns.items():
        panics = 0
        with open(targets[index]["log"], errors="replace") as f:
            panics = sum(1 for line in f if "panicked" in line)
        lines.append(f"Server {index}: SIGTERM after the run, exit status {code} in {seconds:.1f} s; "
                     f"lines with `panicked` in its log ({targets[index]['log']}, not kept here): {panics}.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model directory to start a server on (repeatable)")
    parser.add_argument("--url", help="a running server instead, e.g. http://127.0.0.1:8080")
    parser.add_argument("--pid", type=int, help="the running server's PID, for RSS")
    parser.add_argument("--kind", choices=sorted(MIXES), default="classification", help="the running server's mix")
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rss-interval", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "soak"),
                        help="report path without extension (.md; server logs go to a temporary folder)")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.url:
        url = urllib.parse.urlparse(args.url)
        targets = [{"host": url.hostname, "port": url.port or 80, "pid": args.pid, "kind": args.kind,
                    "model": args.url}]
    else:
        models = args.model or [os.path.join(ROOT, "models", "minilm-l6-cls")]
        log_dir = tempfile.mkdtemp(prefix="soak-")
        targets = [start_server(os.path.abspath(m), log_dir, i) for i, m in enumerate(models)]
    stats, samples = Stats(), []
    load_before = os.getloadavg()[0]
    started = time.time()
    deadline = started + args.duration
    threads = [threading.Thread(target=client, args=(targets, stats, deadline, args.seed * 1000 + i), daemon=True)
               for i in range(args.threads)]
    threads.append(threading.Thread(target=sampler, args=(targets, samples, deadline, args.rss_interval), daemon=True))
    log(f"soak: {args.threads} clients for {args.duration:g} s against "
        + ", ".join(f"{t['model']} (port {t['port']})" for t in targets))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.time()) + CLIENT_TIMEOUT + 10)
    elapsed = time.time() - started
    load_after = os.getloadavg()[0]
    shutdowns = {i: stop_server(t) for i, t in enumerate(targets) if "process" in t}
    text = report(args, targets, stats, samples, elapsed, shutdowns, load_before, load_after)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)
    log(f"written: {args.out}.md")
    errors = sum(s["errors"] for s in stats.by_scenario.values())
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
