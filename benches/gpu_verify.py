#!/usr/bin/env python3
"""GPU verification, written to run as is on a GPU machine that has Python, PyTorch and
transformers but no Rust: carry the binary built with `--features cuda` (docker/cuda-toolchain.sh)
plus models/tiny and models/golden, then

    LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')/nvidia/cu13/lib \\
    python3 benches/gpu_verify.py --binary ./sagemaker-hf-server [--device cuda] [--out results.json]

1. parity: every golden file of models/golden (the transformers pipelines on CPU) replayed against
   the server on the device: largest float difference per file, failures past --tolerance,
   refused requests must stay 400s (tests/common does the same on CPU at 1e-4);
2. throughput: req/s and p50 at concurrency 1/16/64 for the server on the device and for this
   machine's own `transformers` pipeline on the same device and model (--bench-model, --bench-task).

Standard library only (plus torch/transformers for step 2). `--device cpu` runs the same script
on any machine (a dry run of its logic).
"""
import argparse
import concurrent.futures
import glob
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, model, task, device):
        self.port = free_port()
        env = dict(os.environ, HF_MODEL_ID=model, SAGEMAKER_BIND_TO_PORT=str(self.port),
                   SERVER_BIND_ADDRESS="127.0.0.1", SERVER_DEVICE=device, RUST_LOG="warn")
        if task:
            env["HF_TASK"] = task
        self.proc = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                status, headers, _ = self.call("GET", "/ping")
                if status == 200:
                    self.device = headers.get("x-device")
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready in 120 s")

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def max_difference(got, want, path="$"):
    """Largest float difference; raises on a structural mismatch."""
    if isinstance(want, float) or isinstance(got, float):
        return abs(float(got) - float(want))
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            raise ValueError(f"{path}: shape differs")
        return max([max_difference(g, w, f"{path}[{i}]") for i, (g, w) in enumerate(zip(got, want))], default=0.0)
    if isinstance(want, dict):
        if not isinstance(got, dict) or list(got) != list(want):
            raise ValueError(f"{path}: keys differ")
        return max([max_difference(got[k], w, f"{path}.{k}") for k, w in want.items()], default=0.0)
    if got != want:
        raise ValueError(f"{path}: {got!r} != {want!r}")
    return 0.0


def parity(binary, device, tolerance):
    report = []
    for path in sorted(glob.glob(os.path.join(ROOT, "models", "golden", "*", "*.json"))):
        golden = json.load(open(path))
        task = os.path.basename(os.path.dirname(path))
        model = os.path.join(ROOT, "models", golden["model"])
        if not os.path.isdir(model):
            continue
        server = Server(binary, model, task, device)
        worst, failures = 0.0, []
        try:
            for i, record in enumerate(golden["records"]):
                status, _, body = server.call("POST", "/invocations", json.dumps(record["request"]))
                if "response" in record and "deviation" not in record:
                    try:
                        if status != 200:
                            raise ValueError(f"status {status}: {body[:200]!r}")
                        d = max_difference(json.loads(body), record["response"])
                        worst = max(worst, d)
                        if d > tolerance:
                            failures.append(f"record {i}: difference {d:.2e}")
                    except ValueError as e:
                        failures.append(f"record {i}: {e}")
                elif status != 400:
                    failures.append(f"record {i}: expected 400, got {status}")
        finally:
            server.stop()
        report.append({"golden": os.path.relpath(path, ROOT), "device": server.device,
                       "max_difference": worst, "failures": failures})
        print(f"{'ok  ' if not failures else 'FAIL'} {os.path.relpath(path, ROOT)} max diff {worst:.2e}"
              + (f" {failures[:3]}" if failures else ""), flush=True)
    return report


def load(call, bodies, concurrency, seconds):
    latencies, done, deadline = [], 0, time.time() + seconds
    def worker(k):
        nonlocal done
        lat = []
        while time.time() < deadline:
            t = time.perf_counter()
            call(bodies[k % len(bodies)])
            lat.append(time.perf_counter() - t)
        return lat
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for lat in pool.map(worker, range(concurrency)):
            latencies += lat
    elapsed = time.time() - t0
    return {"concurrency": concurrency, "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1e3 if latencies else None}


def throughput(binary, device, model, task, texts, seconds):
    bodies = [json.dumps({"inputs": t}) for t in texts]
    server = Server(binary, model, task, device)
    ours = []
    try:
        def post(body):
            status, _, _ = server.call("POST", "/invocations", body)
            assert status == 200, status
        post(bodies[0])
        ours = [load(post, bodies, c, seconds) for c in (1, 16, 64)]
    finally:
        server.stop()
    import torch  # noqa: the machine's own pipeline, on the same device
    from transformers import pipeline
    pipe = pipeline(task, model=model, tokenizer=model, device=0 if device.startswith("cuda") else -1)
    theirs = [load(lambda body: pipe(json.loads(body)["inputs"]), bodies, c, seconds) for c in (1, 16, 64)]
    return {"model": model, "task": task, "ours": ours, "transformers_pipeline": theirs,
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "sagemaker-hf-server"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--bench-model", default=os.path.join(ROOT, "models", "minilm-l6-cls"))
    ap.add_argument("--bench-task", default="text-classification")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--out", default="gpu-verify.json")
    a = ap.parse_args()
    result = {"device": a.device, "parity": [] if a.skip_parity else parity(a.binary, a.device, a.tolerance)}
    if not a.skip_bench:
        texts = ["I love this!", "The food was great but the service was slow.",
                 "A man is eating a piece of bread.", "This model is used with sagemaker for inference."]
        result["throughput"] = throughput(a.binary, a.device, a.bench_model, a.bench_task, texts, a.seconds)
        print(json.dumps(result["throughput"], indent=1))
    json.dump(result, open(a.out, "w"), indent=1)
    failed = sum(bool(r["failures"]) for r in result["parity"])
    print(f"{len(result['parity']) - failed} golden files pass, {failed} fail; written {a.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
