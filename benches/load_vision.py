#!/usr/bin/env python3
"""Image task load benchmark (image-classification, or image-to-text with --task): this server
against the Python SageMaker HF DLC (../shared/peer) on the same model and image, in one run:
images/s and latency with wrk at 1 and 16 connections, raw `image/jpeg` bodies (the DLC's usual
way), peak RSS of each server.

usage: benches/load_vision.py [--model models/bench/vit-base] [--image models/bench/photo-640x480.jpg]
                              [--task image-classification] [--duration 20] [--conc 1,16]
                              [--skip-peer] [--out benches/results/vision]
  captions: --task image-to-text --model models/bench/vit-gpt2-captioner
            --peer-model models/bench/vit-gpt2-captioner-dlc --out benches/results/image-to-text
            (the DLC cannot load a VisionEncoderDecoder itself: its copy has a code/inference.py)
Needs: wrk, a release build, the peer kit (../shared/peer/install-peer.sh) and the model of
benches/make_vision_bench_model.py (peer venv). Loopback only; every run is bounded in time.
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


def phase(port, pgid, concs, duration, image):
    return load.load_phase(port, pgid, concs, duration, None, body_file=image, content_type="image/jpeg",
                           timeout_s=60)


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "bench", "vit-base"))
    ap.add_argument("--image", default=os.path.join(ROOT, "models", "bench", "photo-640x480.jpg"))
    ap.add_argument("--task", default="image-classification")
    ap.add_argument("--peer-model", help="the DLC's model folder (default: --model)")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--conc", default="1,16")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--port", type=int, default=8183)
    ap.add_argument("--binary", default=load.BINARY, help="our server (default: the release build)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "vision"))
    a = ap.parse_args()
    model, image = os.path.realpath(a.model), os.path.realpath(a.image)
    load.BINARY = os.path.realpath(a.binary)
    concs = [int(c) for c in a.conc.split(",")]
    result = {"task": a.task, "model": os.path.relpath(model, ROOT), "image": os.path.relpath(image, ROOT),
              "duration_s": a.duration, "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "uptime_before": uptime(), "binary": os.path.relpath(load.BINARY, ROOT),
              "command": load.command_line()}
    load.log("ours")
    proc, ready = load.start_ours(model, a.port, a.task)
    try:
        runs, peak = phase(a.port, proc.pid, concs, a.duration, image)
    finally:
        load.stop_ours(proc)
    result["ours"] = {"ready_s": ready, "runs": runs, "peak_rss_mib": peak}
    if not a.skip_peer:
        load.log("peer")
        load.stop_peer(a.port)
        import base64
        body = json.dumps({"inputs": base64.b64encode(open(image, "rb").read()).decode()})
        peer_model = os.path.abspath(a.peer_model or model)
        result["peer_model"] = os.path.relpath(peer_model, ROOT)
        pid, _, ready = load.start_peer(peer_model, a.port, a.task, body)
        try:
            runs, peak = phase(a.port, pid, concs, a.duration, image)
        finally:
            load.stop_peer(a.port)
        result["peer"] = {"first_prediction_s": ready, "runs": runs, "peak_rss_mib": peak}
    result["uptime_after"] = uptime()
    load.save(a.out, result, render(result))


def render(r):
    lines = [f"{r.get('task', 'image-classification')} load run {r['date']}, {r['nproc']} cores, model `{r['model']}`, "
             f"raw `image/jpeg` body `{r['image']}`, wrk -t1, {r['duration_s']} s per concurrency, keep-alive; "
             f"our binary `{r['binary']}`.",
             "", f"Command: `{r.get('command', '?')}`", "",
             f"Load before: `{r['uptime_before']}`; after: `{r['uptime_after']}`.", ""]
    if r.get("peer_model") and r["peer_model"] != r["model"]:
        lines += [f"The DLC serves `{r['peer_model']}`: the same files with a `code/inference.py` (see "
                  "benches/make_vision_bench_model.py).", ""]
    lines += [
             "| concurrency | ours images/s | ours p50 ms | ours p99 ms | DLC images/s | DLC p50 ms | DLC p99 ms | images/s ratio |",
             "|---|---|---|---|---|---|---|---|"]
    ours, peer = r["ours"], r.get("peer")
    for i, o in enumerate(ours["runs"]):
        row = [str(o["concurrency"]), f"{o['rps']:.1f}", f"{o['p50_us'] / 1e3:.1f}", f"{o['p99_us'] / 1e3:.1f}"]
        if peer:
            p = peer["runs"][i]
            row += [f"{p['rps']:.1f}", f"{p['p50_us'] / 1e3:.1f}", f"{p['p99_us'] / 1e3:.1f}",
                    f"{o['rps'] / p['rps']:.2f}x"]
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
