#!/usr/bin/env python3
"""Encoder throughput against ONNX Runtime, the anchor of issue 16, in one run on the same cores.

The MiniLM classifier (models/minilm-l6-cls) exported to ONNX with the peer kit's torch, then
ONNX Runtime from PyPI in process (no HTTP): fp32, and int8 by its dynamic quantization
(`quantize_dynamic`, int8 weights, activations quantized per call), batches of 64 copies of the
6-token input and single sequences. Ours over HTTP (wrk, keep-alive) at 64 clients and at 1, in
float32 and with SERVER_QUANTIZE=int8. ORT's figure has no HTTP, JSON or tokenization in it; ours
has all of them.

usage: benches/encoders_vs_onnxruntime.py [--duration 10] [--out benches/results/encoders-vs-ort]
Needs: a release build (cargo build --release), wrk, ../shared/peer/install-peer.sh (torch, for the
export); makes models/cache/venv-ort (onnxruntime, tokenizers) on first use.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the wrk driver and server start/stop of benches/load.py)

ROOT = load.ROOT
MODEL = os.path.join(ROOT, "models", "minilm-l6-cls")
TEXT = "I love this!"
PEER_PYTHON = os.path.join(os.environ.get("PEER_HOME") or os.path.expanduser("~/.cache/dlc-peer"), "venv", "bin",
                           "python")
ORT_VENV = os.path.join(ROOT, "models", "cache", "venv-ort")
ORT_VERSION = os.environ.get("ORT_VERSION", "onnxruntime")

# Run by the peer's Python; torch's exporter needs the `onnx` package: one built for the peer's
# numpy 1.x, in a folder of its own (EXPORT_LIB) rather than in the peer's pinned stack.
EXPORT = r"""
import sys
model_dir, out = sys.argv[1], sys.argv[2]
sys.path.append(sys.argv[3])
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
enc = AutoTokenizer.from_pretrained(model_dir)(["I love this!"], return_tensors="pt")
names = ["input_ids", "attention_mask", "token_type_ids"]
axes = {n: {0: "batch", 1: "seq"} for n in names}
axes["logits"] = {0: "batch"}
torch.onnx.export(model, tuple(enc[n] for n in names), out, input_names=names, output_names=["logits"],
                  dynamic_axes=axes, opset_version=17, dynamo=False)
"""

QUANTIZE = r"""
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
"""

RUN = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
path, model_dir, text, duration = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(model_dir + "/tokenizer.json")
tokenizer.no_padding()  # the file pads to 128: the server and the DLC do not
ids = tokenizer.encode(text).ids
def feed(batch):
    x = np.array([ids] * batch, dtype=np.int64)
    return {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
result = {"tokens": len(ids), "ort": ort.__version__}
for batch in (64, 1):
    inputs = feed(batch)
    for _ in range(20):
        session.run(None, inputs)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        session.run(None, inputs)
        n += 1
    elapsed = time.perf_counter() - t0
    result[f"batch{batch}"] = {"sequences_per_s": n * batch / elapsed, "ms_per_run": elapsed / n * 1e3}
result["logits"] = session.run(None, feed(1))[0][0].tolist()
print(json.dumps(result))
"""


def ort_python():
    python = os.path.join(ORT_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", ORT_VENV], check=True)
    subprocess.run([os.path.join(ORT_VENV, "bin", "pip"), "install", "-q", "--disable-pip-version-check", ORT_VERSION,
                    "numpy", "tokenizers", "onnx"], check=True)
    return python


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--port", type=int, default=8183)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "encoders-vs-ort"))
    a = ap.parse_args()
    work = os.path.join(ROOT, "models", "cache", "onnx")
    os.makedirs(work, exist_ok=True)
    fp32, int8 = os.path.join(work, "minilm-l6-cls.onnx"), os.path.join(work, "minilm-l6-cls.int8.onnx")
    python = ort_python()
    if not os.path.exists(fp32):
        load.log("export to ONNX (peer torch)")
        lib = os.path.join(work, "export-lib")
        subprocess.run([PEER_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", lib, "onnx==1.17.0"], check=True)
        subprocess.run([PEER_PYTHON, "-c", EXPORT, MODEL, fp32, lib], check=True)
    if not os.path.exists(int8):
        load.log("ORT dynamic quantization")
        subprocess.run([python, "-c", QUANTIZE, fp32, int8], check=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "model": "models/minilm-l6-cls",
              "text": TEXT, "duration_s": a.duration, "command": " ".join(sys.argv), "cpu": cpu_description()}
    for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
        load.log(f"{name}")
        out = subprocess.run([python, "-c", RUN, path, MODEL, TEXT, str(a.duration)], check=True,
                             capture_output=True, text=True).stdout
        result[name] = json.loads(out.strip().splitlines()[-1])
    body = json.dumps({"inputs": TEXT})
    for name, env in (("ours_f32", {}), ("ours_int8", {"SERVER_QUANTIZE": "int8"}),
                      ("ours_bf16", {"SERVER_DTYPE": "bfloat16"})):
        load.log(f"{name}")
        proc, _ = load.start_ours(MODEL, a.port, "text-classification", env)
        try:
            runs, rss = load.load_phase(a.port, proc.pid, [64, 1], a.duration, body)
        finally:
            load.stop_ours(proc)
        result[name] = {"c64": runs[0], "c1": runs[1], "rss_mib": rss}
    load.save(a.out, result, render(result))


def cpu_description():
    """The CPU's model name and the matrix instruction sets our kernels choose between."""
    name, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    have = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(have) or 'no AVX-512'})"


def render(r):
    f32, i8 = r["ort_fp32"], r["ort_int8"]
    o32, o8 = r["ours_f32"], r["ours_int8"]
    lines = [
        f"Encoders against ONNX Runtime {f32['ort']}, {r['date']}, {r['nproc']} cores, `{r['model']}`, input "
        f"`{r['text']}` ({f32['tokens']} tokens), {r['duration_s']} s per measurement. ORT in process, batches of 64 "
        "(no HTTP, JSON or tokenization); ours over HTTP with wrk, keep-alive. Command: "
        f"`{r['command']}`.", "",
        "| | sequences/s (ORT batch 64; ours 64 clients) | ms per sequence alone (ORT batch 1; ours p50 at 1 client) |",
        "|---|---|---|",
        f"| ORT fp32 | {f32['batch64']['sequences_per_s']:.0f} | {f32['batch1']['ms_per_run']:.2f} |",
        f"| ORT int8 (quantize_dynamic) | {i8['batch64']['sequences_per_s']:.0f} | {i8['batch1']['ms_per_run']:.2f} |",
        f"| ours float32 | {o32['c64']['rps']:.0f} | {o32['c1']['p50_us'] / 1e3:.2f} |",
        f"| ours SERVER_QUANTIZE=int8 | {o8['c64']['rps']:.0f} | {o8['c1']['p50_us'] / 1e3:.2f} |",
    ]
    if "ours_bf16" in r:
        ob = r["ours_bf16"]
        lines.append(f"| ours SERVER_DTYPE=bfloat16 | {ob['c64']['rps']:.0f} | {ob['c1']['p50_us'] / 1e3:.2f} |")
    lines += [
        "",
        f"Ratios at 64: ours f32 / ORT fp32 = {o32['c64']['rps'] / f32['batch64']['sequences_per_s']:.2f}x, "
        f"ours int8 / ORT int8 = {o8['c64']['rps'] / i8['batch64']['sequences_per_s']:.2f}x, "
        f"ours int8 / ours f32 = {o8['c64']['rps'] / o32['c64']['rps']:.2f}x.",
    ]
    if "ours_bf16" in r:
        lines[-1] += (f" ours bf16 / ORT fp32 = {ob['c64']['rps'] / f32['batch64']['sequences_per_s']:.2f}x, "
                      f"ours bf16 / ORT int8 = {ob['c64']['rps'] / i8['batch64']['sequences_per_s']:.2f}x.")
    cpu = r.get("cpu")
    if cpu:
        lines.insert(1, f"\nCPU: {cpu}.")
    errors = sum(x[c]["errors"] + x[c]["non2xx"] for x in (o32, o8, r.get("ours_bf16", o8)) for c in ("c64", "c1"))
    if errors:
        lines.append(f"\n{errors} HTTP errors.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
