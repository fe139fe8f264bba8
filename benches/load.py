#!/usr/bin/env python3
"""Load benchmark: this server against the Python SageMaker HF DLC (../shared/peer) on the same
model, in one run, so the ratios compare like with like on a noisy machine.

For each server: time from process start to the first `/ping` 200 (fresh start, N times), then
`wrk` at each concurrency (keep-alive, one short text), peak RSS of all its processes.

usage: benches/load.py [--model models/minilm-l6-cls] [--duration 10] [--conc 1,4,16]
                       [--cold-runs 3] [--skip-peer] [--out benches/results/load]
       benches/load.py --tasks [--only TASK,...] [--duration 8] [--out benches/results/load-tasks]
           one line per encoder task (models from models/fetch_models.sh and
           benches/make_bench_models.py), ours (f32, SERVER_DTYPE=bfloat16 and SERVER_QUANTIZE=int8) and the DLC at
           concurrency 1 and 16
Needs: wrk (apt-get install wrk), a release build (cargo build --release), and for the peer
../shared/peer/install-peer.sh. Loopback only; every run is bounded in time.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_KIT = os.path.join(os.path.dirname(ROOT), "shared", "peer")
# SERVER_BINARY: another build (an A/B against an older commit).
BINARY = os.environ.get("SERVER_BINARY") or os.path.join(ROOT, "target", "release", "sagemaker-hf-server")
LUA = os.path.join(ROOT, "benches", "wrk-post.lua")


def save(out, result, table):
    """Writes OUT.json (the raw result) and OUT.md (its table), and prints the table."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(table)
    print(table)


def command_line():
    """This run's command as typed: our server's settings from the environment (they change what
    is measured, and the script passes them on), then the script and its arguments."""
    import shlex
    settings = [f"{k}={os.environ[k]}" for k in sorted(os.environ)
                if k in ("SERVER_DTYPE", "SERVER_QUANTIZE", "MAX_BATCH_TOKENS") or k.startswith("SAGEMAKER_HF_")]
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join(settings + ["python3", script] + sys.argv[1:])


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ping(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def group_rss_kib(pgid):
    """Sum of VmRSS over the process group (the peer is Java + several Python processes)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except (OSError, ProcessLookupError):
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, pgid):
        super().__init__(daemon=True)
        self.pgid, self.peak, self.stop = pgid, 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, group_rss_kib(self.pgid))
            time.sleep(0.2)


def wrk(port, conc, duration, body, body_file=None, content_type=None, timeout_s=30):
    """One wrk run POSTing `body` (JSON), or the bytes of `body_file` as `content_type`."""
    env = dict(os.environ, BENCH_BODY=body or "")
    if body_file:
        env.update(BENCH_BODY_FILE=body_file, BENCH_CONTENT_TYPE=content_type or "application/octet-stream")
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", f"{timeout_s}s", "-s", LUA,
                          f"http://127.0.0.1:{port}/invocations"], capture_output=True, text=True, env=env,
                         timeout=duration + 2 * timeout_s).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["concurrency"] = conc
    return r


def start_ours(model, port, task=None, extra_env=None):
    env = dict(os.environ, HF_MODEL_ID=model, SAGEMAKER_BIND_TO_PORT=str(port), SERVER_BIND_ADDRESS="127.0.0.1",
               RUST_LOG="warn", **(extra_env or {}))
    if task:
        env["HF_TASK"] = task
    t0 = time.monotonic()
    proc = subprocess.Popen([BINARY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while ping(port) != 200:
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            raise RuntimeError("our server did not become ready")
        time.sleep(0.005)
    return proc, time.monotonic() - t0


def stop_ours(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def start_peer(model, port, task="text-classification", body='{"inputs": "I love this!"}'):
    t0 = time.monotonic()
    # start-peer.sh returns once every MMS worker has loaded the model (its default PEER_WAIT), so
    # no worker is still loading (and using CPU) while we measure; the first /ping 200 comes much
    # earlier and is read back from its log.
    out = subprocess.run([os.path.join(PEER_KIT, "start-peer.sh"), model, task, str(port)],
                         capture_output=True, text=True, timeout=300)
    pid = int(out.stdout.strip().splitlines()[-1])
    startup = os.path.join(os.environ.get("PEER_HOME") or os.path.expanduser("~/.cache/dlc-peer"), "run", str(port),
                           "startup.txt")
    first_ping = None
    if os.path.exists(startup):
        m = re.search(r"first_ping_200_ms=(\d+)", open(startup).read())
        first_ping = int(m.group(1)) / 1000 if m else None
    # Really ready = a prediction answered (MMS says Healthy before the workers have loaded).
    body = body.encode()
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
        if time.monotonic() - t0 > 300:
            raise RuntimeError("peer not ready")
    return pid, first_ping, time.monotonic() - t0


def stop_peer(port):
    subprocess.run([os.path.join(PEER_KIT, "stop-peer.sh"), str(port)], capture_output=True, timeout=120)


def load_phase(port, pgid, concs, duration, body, **wrk_args):
    # Warm-up (every worker, caches, allocators), then one wrk run per concurrency.
    wrk(port, 4, 5, body, **wrk_args)
    sampler = RssSampler(pgid)
    sampler.start()
    runs = [wrk(port, c, duration, body, **wrk_args) for c in concs]
    sampler.stop = True
    sampler.join()
    return runs, sampler.peak / 1024


CONTEXT = "My Name is Philipp and I live in Nuremberg. This model is used with sagemaker for inference."
# (task, model, body, whether the Python DLC serves the task: it has no sentence-* tasks).
TASKS = [
    ("token-classification", "models/quire-tagger", {"inputs": "She has went to the store and its raining."}, True),
    ("question-answering", "models/bench/minilm-qa",
     {"inputs": {"question": "What is used for inference?", "context": CONTEXT}}, True),
    ("fill-mask", "models/bench/minilm-mlm", {"inputs": "Paris is the [MASK] of France."}, True),
    ("feature-extraction", "models/all-MiniLM-L6-v2", {"inputs": "A man is eating food."}, True),
    ("zero-shot-classification", "models/bench/minilm-nli",
     {"inputs": "I have a problem with my iphone that needs to be resolved asap!",
      "parameters": {"candidate_labels": ["urgent", "not urgent", "phone", "tablet", "computer"]}}, True),
    ("sentence-embeddings", "models/all-MiniLM-L6-v2", {"inputs": "A man is eating food."}, False),
    ("sentence-similarity", "models/all-MiniLM-L6-v2",
     {"inputs": {"source_sentence": "A man is eating food.",
                 "sentences": ["A man is eating a piece of bread.", "The girl is carrying a baby."]}}, False),
    ("sentence-ranking", "models/bench/minilm-ranker",
     {"inputs": [["good food", "the food was great"], ["good food", "the service was slow"]]}, False),
]


def run_tasks(a):
    concs = [1, 16]
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "duration_s": a.duration,
              "tasks": []}
    only = set(a.only.split(",")) if a.only else None
    for task, model, body, peer_serves in TASKS:
        if only and task not in only:
            continue
        model = os.path.join(ROOT, model)
        body = json.dumps(body)
        entry = {"task": task, "model": os.path.relpath(model, ROOT), "body": body}
        log(f"{task}: ours")
        proc, _ = start_ours(model, a.port, task)
        try:
            entry["ours"], entry["ours_rss_mib"] = load_phase(a.port, proc.pid, concs, a.duration, body)
        finally:
            stop_ours(proc)
        # bfloat16 dense layers (AVX512-BF16 CPUs) and int8 ones (SERVER_QUANTIZE=int8): scores within
        # 1e-2 of f32 (tests/parity_generic_path.rs, tests/parity_int8.rs), not the DLC's f32 digits
        for key, (name, value) in (("ours_bf16", ("SERVER_DTYPE", "bfloat16")),
                                   ("ours_int8", ("SERVER_QUANTIZE", "int8"))):
            log(f"{task}: ours, {name}={value}")
            proc, _ = start_ours(model, a.port, task, {name: value})
            try:
                entry[key], _ = load_phase(a.port, proc.pid, concs, a.duration, body)
            finally:
                stop_ours(proc)
        if peer_serves and not a.skip_peer:
            log(f"{task}: peer")
            stop_peer(a.port)
            try:
                pid, _, _ = start_peer(model, a.port, task, body)
                entry["peer"], entry["peer_rss_mib"] = load_phase(a.port, pid, concs, a.duration, body)
            finally:
                stop_peer(a.port)
        result["tasks"].append(entry)
    save(a.out, result, render_tasks(result))


def render_tasks(r):
    lines = [f"Per-task load run {r['date']}, {r['nproc']} cores, wrk -t1, {r['duration_s']} s per concurrency, "
             "keep-alive, one request body per task (in the JSON file).", "",
             "| task | model | ours req/s c=1 | DLC req/s c=1 | ours req/s c=16 | DLC req/s c=16 | ratio c=16 | ours bf16 req/s c=16 | bf16 ratio c=16 | ours int8 req/s c=16 | int8 ratio c=16 | ours p50 ms c=1 | DLC p50 ms c=1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in r["tasks"]:
        o1, o16 = t["ours"]
        b16 = t["ours_bf16"][1] if "ours_bf16" in t else None
        bf16 = f"{b16['rps']:.0f}" if b16 else "-"
        i16 = t["ours_int8"][1] if "ours_int8" in t else None
        int8 = f"{i16['rps']:.0f}" if i16 else "-"
        row = [t["task"], f"`{t['model']}`", f"{o1['rps']:.0f}"]
        if "peer" in t:
            p1, p16 = t["peer"]
            row += [f"{p1['rps']:.0f}", f"{o16['rps']:.0f}", f"{p16['rps']:.0f}", f"{o16['rps'] / p16['rps']:.1f}x",
                    bf16, f"{b16['rps'] / p16['rps']:.1f}x" if b16 else "-",
                    int8, f"{i16['rps'] / p16['rps']:.1f}x" if i16 else "-",
                    f"{o1['p50_us'] / 1e3:.2f}", f"{p1['p50_us'] / 1e3:.2f}"]
        else:
            row += ["(no such task)", f"{o16['rps']:.0f}", "-", "-", bf16, "-", int8, "-", f"{o1['p50_us'] / 1e3:.2f}",
                    "-"]
        errors = sum(x["errors"] + x["non2xx"]
                     for x in t["ours"] + t.get("ours_bf16", []) + t.get("ours_int8", []) + t.get("peer", []))
        lines.append("| " + " | ".join(row) + " |" + (f" ({errors} errors)" if errors else ""))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", action="store_true", help="one line per encoder task instead")
    ap.add_argument("--only", default="", help="with --tasks: a comma-separated subset of the tasks")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "minilm-l6-cls"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conc", default="1,4,16")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--body", default='{"inputs": "I love this!"}')
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "load"))
    a = ap.parse_args()
    if a.tasks:
        return run_tasks(a)
    model = os.path.realpath(a.model)
    concs = [int(c) for c in a.conc.split(",")]
    result = {"model": os.path.relpath(model, ROOT), "body": a.body, "duration_s": a.duration,
              "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}

    log("ours: cold starts")
    cold = []
    for _ in range(a.cold_runs):
        proc, ready = start_ours(model, a.port)
        cold.append(ready)
        stop_ours(proc)
    proc, _ = start_ours(model, a.port)
    log("ours: load")
    runs, peak = load_phase(a.port, proc.pid, concs, a.duration, a.body)
    stop_ours(proc)
    result["ours"] = {"ready_s": cold, "runs": runs, "peak_rss_mib": peak}

    if not a.skip_peer:
        log("peer: start")
        stop_peer(a.port)
        pid, first_ping, ready = start_peer(model, a.port)
        log("peer: load")
        try:
            runs, peak = load_phase(a.port, pid, concs, a.duration, a.body)
        finally:
            stop_peer(a.port)
        result["peer"] = {"first_ping_s": first_ping, "first_prediction_s": ready, "runs": runs,
                          "peak_rss_mib": peak}

    save(a.out, result, render(result))


def render(r):
    lines = [f"Load run {r['date']}, {r['nproc']} cores, model `{r['model']}`, body `{r['body']}`, "
             f"wrk -t1, {r['duration_s']} s per concurrency, keep-alive.", ""]
    ours, peer = r["ours"], r.get("peer")
    lines.append("| concurrency | ours req/s | ours p50 ms | ours p99 ms | DLC req/s | DLC p50 ms | DLC p99 ms | req/s ratio | p50 ratio |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for i, o in enumerate(ours["runs"]):
        p = peer["runs"][i] if peer else None
        row = [str(o["concurrency"]), f"{o['rps']:.0f}", f"{o['p50_us'] / 1e3:.2f}", f"{o['p99_us'] / 1e3:.2f}"]
        if p:
            row += [f"{p['rps']:.0f}", f"{p['p50_us'] / 1e3:.2f}", f"{p['p99_us'] / 1e3:.2f}",
                    f"{o['rps'] / p['rps']:.2f}x", f"{o['p50_us'] / p['p50_us']:.2f}x"]
        else:
            row += ["-"] * 5
        errors = o["errors"] + o["non2xx"]
        lines.append("| " + " | ".join(row) + " |" + (f" ({errors} errors)" if errors else ""))
    lines.append("")
    lines.append(f"Ours: ready (process start to /ping 200) {', '.join(f'{s:.3f}' for s in ours['ready_s'])} s; "
                 f"peak RSS under load {ours['peak_rss_mib']:.0f} MiB.")
    if peer:
        ping = f"first /ping 200 after {peer['first_ping_s']:.1f} s, " if peer["first_ping_s"] else ""
        lines.append(f"Python DLC: {ping}all workers loaded and a prediction answered after "
                     f"{peer['first_prediction_s']:.1f} s; peak RSS under load {peer['peak_rss_mib']:.0f} MiB "
                     f"(all processes).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
