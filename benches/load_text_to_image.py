#!/usr/bin/env python3
"""Text-to-image load benchmark: this server against the Python SageMaker HF DLC (../shared/peer,
with diffusers) on the same diffusers folder, in one run: images/s and latency with wrk at 1 and 4
connections, a JSON prompt with `num_inference_steps` (both answer the base64 PNG as JSON), peak
RSS of each server.

usage: benches/load_text_to_image.py [--model models/bench/sd-quarter] [--steps 10] [--duration 40]
                                     [--conc 1,4] [--skip-peer] [--out benches/results/text-to-image]
Needs: wrk, a release build, the peer kit (../shared/peer/install-peer.sh) with diffusers in its
venv (pip install diffusers==0.32.2), and the model of benches/make_diffusion_bench_model.py.
Loopback only; every run is bounded in time.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the shared start/stop/RSS helpers)

ROOT = load.ROOT
TASK = "text-to-image"


def phase(port, pgid, concs, duration, body):
    """One request to warm up (completed: no generation is left running), then one wrk run per
    concurrency, sampling the server's RSS."""
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=600).read()
    sampler = load.RssSampler(pgid)
    sampler.start()
    runs = [load.wrk(port, c, duration, body, timeout_s=300) for c in concs]
    sampler.stop = True
    sampler.join()
    return runs, sampler.peak / 1024


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "bench", "sd-quarter"))
    ap.add_argument("--peer-model", default=os.path.join(ROOT, "models", "bench", "sd-quarter-dlc"),
                    help="the DLC's copy (the peer kit wants a config.json beside model_index.json)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--conc", default="1,4")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--port", type=int, default=8184)
    ap.add_argument("--binary", default=load.BINARY, help="our server (default: the release build)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "text-to-image"))
    a = ap.parse_args()
    model = os.path.realpath(a.model)
    load.BINARY = os.path.realpath(a.binary)
    concs = [int(c) for c in a.conc.split(",")]
    body = json.dumps({"inputs": "a photo of a cat on a volcano",
                       "parameters": {"num_inference_steps": a.steps}})
    result = {"model": os.path.relpath(model, ROOT), "body": body, "duration_s": a.duration,
              "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "uptime_before": uptime(), "binary": os.path.relpath(load.BINARY, ROOT)}
    load.log("ours")
    proc, ready = load.start_ours(model, a.port)
    try:
        runs, peak = phase(a.port, proc.pid, concs, a.duration, body)
    finally:
        load.stop_ours(proc)
    result["ours"] = {"ready_s": ready, "runs": runs, "peak_rss_mib": peak}
    if not a.skip_peer:
        load.log("peer")
        load.stop_peer(a.port)
        pid, _, ready = load.start_peer(os.path.abspath(a.peer_model), a.port, TASK, body)
        try:
            runs, peak = phase(a.port, pid, concs, a.duration, body)
        finally:
            load.stop_peer(a.port)
        result["peer"] = {"first_prediction_s": ready, "runs": runs, "peak_rss_mib": peak}
    result["uptime_after"] = uptime()
    load.save(a.out, result, render(result))


def render(r):
    lines = [f"text-to-image load run {r['date']}, {r['nproc']} cores, model `{r['model']}`, body `{r['body']}` "
             f"(256 x 256), wrk -t1, {r['duration_s']} s per concurrency, keep-alive; our binary `{r['binary']}`.",
             "", f"Load before: `{r['uptime_before']}`; after: `{r['uptime_after']}`.", "",
             "| concurrency | ours images | ours images/s | ours p50 s | DLC images | DLC images/s | DLC p50 s | images/s ratio |",
             "|---|---|---|---|---|---|---|---|"]
    ours, peer = r["ours"], r.get("peer")
    for i, o in enumerate(ours["runs"]):
        row = [str(o["concurrency"]), str(o["requests"]), f"{o['rps']:.2f}", f"{o['p50_us'] / 1e6:.2f}"]
        if peer:
            p = peer["runs"][i]
            row += [str(p["requests"]), f"{p['rps']:.2f}", f"{p['p50_us'] / 1e6:.2f}",
                    f"{o['rps'] / p['rps']:.2f}x" if p["rps"] else "-"]
        else:
            row += ["-"] * 4
        errors = o["errors"] + o["non2xx"] + (peer["runs"][i]["errors"] + peer["runs"][i]["non2xx"] if peer else 0)
        lines.append("| " + " | ".join(row) + " |" + (f" ({errors} errors)" if errors else ""))
    lines.append("")
    lines.append(f"Peak RSS under load: ours {ours['peak_rss_mib']:.0f} MiB"
                 + (f", the DLC {peer['peak_rss_mib']:.0f} MiB (all processes)" if peer else "") + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
