#!/usr/bin/env python3
"""Speech recognition load benchmark: this server against the Python SageMaker HF DLC
(../shared/peer) on the same Whisper model and audio file, in one run: requests/s, audio-seconds/s
(requests/s x the file's duration) and p50/p90 latency at 1 and 16 concurrent clients, raw
`audio/wave` bodies (the DLC's usual way; it decodes them with ffmpeg), peak RSS of each server.

Before any timing, each server transcribes the file once (fresh process: the latency of that first
request and of a second one are recorded) and the two texts must be identical: if not, both are
printed and the run fails.

usage: benches/load_asr.py [--model models/bench/whisper-tiny-shaped] [--audio models/fixtures/audio/speech16k.wav]
                           [--duration 20] [--conc 1,16] [--skip-peer] [--no-build] [--out benches/results/asr]
Needs: ffprobe (ffmpeg), the peer kit (../shared/peer/install-peer.sh) and the model of
benches/make_asr_bench_model.py (peer venv). Unless --no-build or --binary, runs
`cargo build --release` first (a no-op when the release binary is up to date). Loopback only;
every run is bounded in time (and the whole script by --max-total-s).
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the shared start/stop/RSS helpers)

ROOT = load.ROOT
CONTENT_TYPES = {".wav": "audio/wave", ".flac": "audio/x-flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
TASK = "automatic-speech-recognition"


class Overtime(Exception):
    pass


def on_alarm(*_):
    raise Overtime("--max-total-s reached")


def audio_seconds(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                         capture_output=True, text=True, timeout=30)
    return float(out.stdout.strip())


def cpu_model():
    with open("/proc/cpuinfo") as f:
        names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else "unknown"


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def transcribe(port, audio, content_type, timeout=300):
    """One POST of the raw file; returns (seconds, status, body)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=audio,
                                 headers={"Content-Type": content_type, "Accept": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return time.monotonic() - t0, status, body.decode("utf-8", "replace")


def first_two(port, audio, content_type, who):
    """The first request of a fresh server and a second one: (text, first_s, second_s)."""
    first_s, status, body = transcribe(port, audio, content_type)
    if status != 200:
        raise RuntimeError(f"{who}: HTTP {status}: {body}")
    second_s, status2, body2 = transcribe(port, audio, content_type)
    if status2 != 200 or body2 != body:
        raise RuntimeError(f"{who}: second request differs: HTTP {status2}: {body2!r} vs {body!r}")
    load.log(f"{who}: first request {first_s:.2f} s, second {second_s:.2f} s: {body}")
    return json.loads(body)["text"], first_s, second_s


def start_peer(model, port):
    """start-peer.sh returns once every MMS worker has loaded the model; prints the PID."""
    t0 = time.monotonic()
    out = subprocess.run([os.path.join(load.PEER_KIT, "start-peer.sh"), model, TASK, str(port)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"start-peer.sh failed: {out.stderr}")
    return int(out.stdout.strip().splitlines()[-1]), time.monotonic() - t0


def drive(port, conc, duration, audio, content_type, timeout_s=300):
    """Closed loop: `conc` clients (one keep-alive connection each) POST the file back to back for
    `duration` seconds, then finish the request they have in flight. Throughput = requests
    completed / time to the last completion. (Not wrk: a server that batches the 16 requests
    finishes them all together, seconds apart, so counting only those done within a fixed window
    says little; and no work is left running into the next phase.)"""
    t0 = time.monotonic()
    end = t0 + duration
    done, failures = [], []
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            while time.monotonic() < end:
                start = time.monotonic()
                try:
                    conn.request("POST", "/invocations", body=audio,
                                 headers={"Content-Type": content_type, "Accept": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    ok = r.status == 200
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                except OSError as e:
                    conn.close()
                    ok = e
                with lock:
                    (done if ok is True else failures).append((start, time.monotonic(), ok))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end + timeout_s + 10 - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"a client is still waiting at concurrency {conc}")
    latencies = sorted(e - s for s, e, _ in done)
    elapsed = max([e for _, e, _ in done + failures], default=time.monotonic()) - t0

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6 if latencies else 0

    return {"concurrency": conc, "requests": len(done), "errors": len(failures),
            "error_samples": [repr(f) for _, _, f in failures[:3]], "elapsed_s": elapsed,
            "rps": len(done) / elapsed, "p50_us": pct(0.5), "p90_us": pct(0.9), "max_us": pct(1.0),
            "mean_us": sum(latencies) / len(latencies) * 1e6 if latencies else 0}


def busy_jiffies():
    """(all CPUs' non-idle time, the server group's + this script's CPU time), in clock ticks."""
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    total = sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait
    return total, group_jiffies()


def group_jiffies():
    mine, own = 0, os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[2] = pgrp, [11], [12] = utime, stime
            if int(fields[2]) in PGIDS or int(pid) == own:
                mine += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return mine


PGIDS = set()


def measured(port, pgid, conc, duration, audio, content_type):
    """drive(), plus the CPU seconds other processes of the machine used meanwhile (noise)."""
    PGIDS.clear()
    PGIDS.add(pgid)
    total0, mine0 = busy_jiffies()
    run = drive(port, conc, duration, audio, content_type)
    total1, mine1 = busy_jiffies()
    tick = os.sysconf("SC_CLK_TCK")
    run["server_and_client_cpu_s"] = (mine1 - mine0) / tick
    run["other_cpu_s"] = max(0.0, (total1 - total0 - (mine1 - mine0)) / tick)
    return run


def phase(port, pgid, concs, duration, audio, content_type):
    """A 5 s warm-up at 4 clients (every DLC worker, caches, allocators), then one run per
    concurrency, peak RSS over the runs."""
    drive(port, 4, 5, audio, content_type)
    sampler = load.RssSampler(pgid)
    sampler.start()
    runs = []
    for c in concs:
        runs.append(measured(port, pgid, c, duration, audio, content_type))
        load.log(f"  c={c}: {runs[-1]['requests']} requests in {runs[-1]['elapsed_s']:.1f} s, "
                 f"{runs[-1]['errors']} errors; other processes used {runs[-1]['other_cpu_s']:.1f} CPU s")
    sampler.stop = True
    sampler.join()
    return runs, sampler.peak / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "bench", "whisper-tiny-shaped"))
    ap.add_argument("--audio", default=os.path.join(ROOT, "models", "fixtures", "audio", "speech16k.wav"))
    ap.add_argument("--content-type", default=None, help="default: from the audio file's extension")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--conc", default="1,16")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--port", type=int, default=8184)
    ap.add_argument("--binary", default=None, help="our server (default: the release build, built first)")
    ap.add_argument("--no-build", action="store_true", help="do not run `cargo build --release` first")
    ap.add_argument("--max-total-s", type=int, default=1800, help="abort the whole run after this long")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "asr"))
    a = ap.parse_args()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(a.max_total_s)
    command = load.command_line()
    model, audio_path = os.path.realpath(a.model), os.path.realpath(a.audio)
    content_type = a.content_type or CONTENT_TYPES.get(os.path.splitext(audio_path)[1].lower(), "audio/x-audio")
    if a.binary:
        load.BINARY = os.path.realpath(a.binary)
    elif not a.no_build:
        load.log("cargo build --release")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True, timeout=a.max_total_s)
    if not os.access(load.BINARY, os.X_OK):
        sys.exit(f"no server binary at {load.BINARY}")
    audio = open(audio_path, "rb").read()
    seconds = audio_seconds(audio_path)
    concs = [int(c) for c in a.conc.split(",")]
    result = {"command": command, "model": os.path.relpath(model, ROOT), "audio": os.path.relpath(audio_path, ROOT),
              "audio_s": seconds, "audio_bytes": len(audio), "content_type": content_type,
              "duration_s": a.duration, "nproc": os.cpu_count(), "cpu": cpu_model(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "uptime_before": uptime(),
              "binary": os.path.relpath(load.BINARY, ROOT)}

    # 1. the texts, before any timing
    load.log("ours: transcript")
    proc, ready = load.start_ours(model, a.port, TASK)
    try:
        text, first, second = first_two(a.port, audio, content_type, "ours")
    finally:
        load.stop_ours(proc)
    result["ours"] = {"ready_s": ready, "first_request_s": first, "second_request_s": second}
    result["text"] = text
    if not a.skip_peer:
        load.log("peer: start")
        load.stop_peer(a.port)
        try:
            pid, ready = start_peer(model, a.port)
            peer_text, first, second = first_two(a.port, audio, content_type, "peer")
            result["peer"] = {"ready_s": ready, "first_request_s": first, "second_request_s": second}
            if peer_text != text:
                print(f"TEXTS DIFFER\nours: {text!r}\nDLC:  {peer_text!r}", file=sys.stderr)
                sys.exit(1)
            # 2. the DLC's load phases (it is up already)
            load.log("peer: load")
            runs, peak = phase(a.port, pid, concs, a.duration, audio, content_type)
            result["peer"].update(runs=runs, peak_rss_mib=peak)
        finally:
            load.stop_peer(a.port)

    # 3. ours, a fresh process
    load.log("ours: load")
    proc, _ = load.start_ours(model, a.port, TASK)
    try:
        runs, peak = phase(a.port, proc.pid, concs, a.duration, audio, content_type)
    finally:
        load.stop_ours(proc)
    result["ours"].update(runs=runs, peak_rss_mib=peak)
    for side in ("ours", "peer"):
        for run in result.get(side, {}).get("runs", []):
            run["audio_s_per_s"] = run["rps"] * seconds
    result["uptime_after"] = uptime()
    signal.alarm(0)
    load.save(a.out, result, render(result))


def render(r):
    ours, peer = r["ours"], r.get("peer")
    lines = [f"Speech recognition load run {r['date']}, CPU `{r['cpu']}` ({r['nproc']} cores), model `{r['model']}`, "
             f"raw `{r['content_type']}` body `{r['audio']}` ({r['audio_s']:.2f} s of audio, {r['audio_bytes']} bytes), "
             f"closed-loop keep-alive clients sending for {r['duration_s']} s per concurrency (then finishing the request in "
             f"flight; req/s = completed / time to the last completion) after a 5 s warm-up at 4; "
             f"our binary `{r['binary']}`.", "",
             f"Command: `{r['command']}`", "",
             f"Load before: `{r['uptime_before']}`; after: `{r['uptime_after']}`.", "",
             (f"Both servers' text for the file (identical, checked before timing): `{r['text']}`" if peer
              else f"Our text for the file: `{r['text']}`"), "",
             "| concurrency | ours requests | ours req/s | ours audio-s/s | ours p50 ms | ours p90 ms | DLC requests | DLC req/s | DLC audio-s/s "
             "| DLC p50 ms | DLC p90 ms | req/s ours/DLC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, o in enumerate(ours["runs"]):
        row = [str(o["concurrency"]), f"{o['requests']} in {o['elapsed_s']:.1f} s", f"{o['rps']:.2f}", f"{o['audio_s_per_s']:.1f}", f"{o['p50_us'] / 1e3:.0f}",
               f"{o['p90_us'] / 1e3:.0f}"]
        errors = o["errors"]
        if peer:
            p = peer["runs"][i]
            row += [f"{p['requests']} in {p['elapsed_s']:.1f} s", f"{p['rps']:.2f}", f"{p['audio_s_per_s']:.1f}", f"{p['p50_us'] / 1e3:.0f}",
                    f"{p['p90_us'] / 1e3:.0f}", f"{o['rps'] / p['rps']:.2f}x" if p["rps"] else "-"]
            errors += p["errors"]
        else:
            row += ["-"] * 6
        lines.append("| " + " | ".join(row) + " |" + (f" ({errors} errors)" if errors else ""))
    lines.append("")
    lines.append(f"Peak RSS under load (all processes): ours {ours['peak_rss_mib']:.0f} MiB"
                 + (f", the DLC {peer['peak_rss_mib']:.0f} MiB: ours/DLC {ours['peak_rss_mib'] / peer['peak_rss_mib']:.3f}"
                    if peer else "") + ".")
    lines.append("")
    noise = [f"{side} c={x['concurrency']} {x['other_cpu_s']:.1f} s" for side, runs in
             (("ours", ours["runs"]), ("DLC", peer["runs"] if peer else [])) for x in runs]
    lines.append("CPU time used by other processes of the machine during each run (noise): " + ", ".join(noise) + ".")
    lines.append("")
    lines.append(f"Fresh process, first request / second request: ours {ours['first_request_s'] * 1e3:.0f} / "
                 f"{ours['second_request_s'] * 1e3:.0f} ms (ready {ours['ready_s']:.2f} s after start)"
                 + (f"; the DLC {peer['first_request_s'] * 1e3:.0f} / {peer['second_request_s'] * 1e3:.0f} ms "
                    f"(start-peer.sh: all workers loaded after {peer['ready_s']:.1f} s)" if peer else "") + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
