#!/usr/bin/env python3
"""GPU verification, written to run as is on a GPU machine that has Python, PyTorch and
transformers but no Rust: carry the binary built with `--features cuda` (docker/cuda-toolchain.sh)
plus models/tiny and models/golden (and a BERT tokenizer for step 3), then

    LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])')/cu13/lib \\
    python3 benches/gpu_verify.py --binary ./sagemaker-hf-server --tokenizer DIR [--out results.json]

1. parity: every golden file of models/golden (the transformers pipelines on CPU) replayed against
   the server on the device, once per --dtypes entry: largest float difference per file, failures
   past --tolerance (float32) or --half-tolerance (float16/bfloat16), refused requests must stay
   400s (tests/common does the same on CPU at 1e-4). Half-precision mismatches are split into
   numbers past the tolerance and structure (a label or token order flipped by a near-tie);
2. a realistic model: BERT-base-sized (12 x 768, random weights, seeded; made here with this
   machine's transformers and the --tokenizer vocabulary) for text-classification: our scores in
   each dtype against this machine's own `transformers` pipeline on the same GPU;
3. throughput: req/s and p50 at concurrency 1/16/64 for the server on the device (each dtype) and
   for that pipeline in float32 and float16 (--bench-model to use another model);
4. with --generation-tokenizer DIR (a SmolLM2 tokenizer folder): text generation on a 1.1B-parameter
   Llama (16 layers x 2048, GQA 32/8 heads, random weights, seeded, float16) made here: generated
   tokens/s and median latency at 1/16/64 concurrent prompts (64 new tokens each, greedy) for our
   server and for this machine's `transformers` text-generation pipeline in float16.

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
    def __init__(self, binary, model, task, device, dtype="auto"):
        self.port = free_port()
        env = dict(os.environ, HF_MODEL_ID=model, SAGEMAKER_BIND_TO_PORT=str(self.port),
                   SERVER_BIND_ADDRESS="127.0.0.1", SERVER_DEVICE=device, SERVER_DTYPE=dtype,
                   RUST_LOG="warn")
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
                    self.dtype = headers.get("x-dtype")
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


def replay_file(binary, device, dtype, tolerance, path):
    golden = json.load(open(path))
    task = os.path.basename(os.path.dirname(path))
    model = os.path.join(ROOT, "models", golden["model"])
    if not os.path.isdir(model):
        return None
    server = Server(binary, model, task, device, dtype)
    worst, failures, structural = 0.0, [], []
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
                    structural.append(f"record {i}: {e}")
            elif status != 400:
                failures.append(f"record {i}: expected 400, got {status}")
    finally:
        server.stop()
    return {"golden": os.path.relpath(path, ROOT), "device": server.device, "dtype": server.dtype,
            "max_difference": worst, "failures": failures, "structural": structural}


def parity(binary, device, dtype, tolerance, jobs):
    paths = [p for p in sorted(glob.glob(os.path.join(ROOT, "models", "golden", "*", "*.json")))
             if "request" in json.load(open(p))["records"][0]]  # (not the next-token logits file)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        report = [r for r in pool.map(lambda p: replay_file(binary, device, dtype, tolerance, p), paths) if r]
    for r in report:
        bad = r["failures"] + r["structural"]
        print(f"{'ok  ' if not bad else 'FAIL'} [{r['dtype']}] {r['golden']} max diff {r['max_difference']:.2e}"
              + (f" {bad[:3]}" if bad else ""), flush=True)
    return report


def make_bert_base(directory, tokenizer_dir):
    """A BERT-base-sized sequence classifier (random weights, seed 0) with a real BERT vocabulary."""
    import shutil
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return directory
    torch.manual_seed(0)
    config = BertConfig(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    BertForSequenceClassification(config).eval().save_pretrained(directory, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


def pipeline_parity(binary, device, dtypes, model, texts):
    """Our per-label scores in each dtype against this machine's transformers pipeline (float32)."""
    import torch
    from transformers import pipeline
    pipe = pipeline("text-classification", model=model, tokenizer=model,
                    device=0 if device.startswith("cuda") else -1)
    want = [{d["label"]: d["score"] for d in pipe(t, top_k=None)} for t in texts]
    del pipe
    torch.cuda.empty_cache()
    result = {}
    for dtype in dtypes:
        server = Server(binary, model, "text-classification", device, dtype)
        try:
            worst, flips = 0.0, 0
            for text, scores in zip(texts, want):
                status, _, body = server.call("POST", "/invocations",
                                              json.dumps({"inputs": text, "parameters": {"top_k": None}}))
                assert status == 200, body
                got = {d["label"]: d["score"] for d in json.loads(body)}
                worst = max(worst, max(abs(got[k] - v) for k, v in scores.items()))
                flips += max(got, key=got.get) != max(scores, key=scores.get)
            result[server.dtype] = {"max_score_difference": worst, "top_label_flips": flips, "texts": len(texts)}
        finally:
            server.stop()
    print("pipeline parity:", json.dumps(result), flush=True)
    return result


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


def throughput(binary, device, dtypes, model, task, texts, seconds):
    bodies = [json.dumps({"inputs": t}) for t in texts]
    ours = {}
    for dtype in dtypes:
        server = Server(binary, model, task, device, dtype)
        try:
            def post(body):
                status, _, _ = server.call("POST", "/invocations", body)
                assert status == 200, status
            for body in bodies:
                post(body)
            ours[server.dtype] = [load(post, bodies, c, seconds) for c in (1, 16, 64)]
            print("ours", server.dtype, json.dumps(ours[server.dtype]), flush=True)
        finally:
            server.stop()
    import torch  # noqa: the machine's own pipeline, on the same device
    import transformers
    from transformers import pipeline
    theirs = {}
    for name, torch_dtype in (("f32", torch.float32), ("f16", torch.float16)):
        pipe = pipeline(task, model=model, tokenizer=model, device=0 if device.startswith("cuda") else -1)
        pipe.model.to(torch_dtype)  # (transformers 4 and 5 name the dtype argument differently)
        for body in bodies:
            pipe(json.loads(body)["inputs"])
        theirs[name] = [load(lambda body: pipe(json.loads(body)["inputs"]), bodies, c, seconds) for c in (1, 16, 64)]
        print("transformers pipeline", name, json.dumps(theirs[name]), flush=True)
        del pipe
    return {"model": model, "task": task, "ours": ours, "transformers_pipeline": theirs,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def make_llama_1b(directory, tokenizer_dir):
    """A Llama-3.2-1B-shaped causal LM with random weights (seed 0), saved in float16."""
    import shutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return directory
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.half().save_pretrained(directory, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


def generation_bench(binary, device, model, seconds, new_tokens=64):
    import torch
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    prompts = ["Once upon a time", "The capital of France is", "Write a short poem about the sea.",
               "Explain what a neural network is in simple terms.", "def fibonacci(n):"]

    def run(generate):
        result = []
        for c in (1, 16, 64):
            tokens, latencies, deadline = [], [], time.time() + seconds

            def worker(k):
                count, lat, i = 0, [], k
                while time.time() < deadline:
                    t = time.perf_counter()
                    text = generate(prompts[i % len(prompts)])
                    lat.append(time.perf_counter() - t)
                    count += len(tokenizer.encode(text, add_special_tokens=False).ids)
                    i += 1
                return count, lat
            t0 = time.time()
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                for count, lat in pool.map(worker, range(c)):
                    tokens.append(count)
                    latencies += lat
            elapsed = time.time() - t0
            result.append({"concurrency": c, "tokens_per_s": sum(tokens) / elapsed, "requests": len(latencies),
                           "p50_latency_s": statistics.median(latencies) if latencies else None})
            print("  ", json.dumps(result[-1]), flush=True)
        return result

    server = Server(binary, model, "text-generation", device)
    try:
        def ours(prompt):
            body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "return_full_text": False}}
            status, _, data = server.call("POST", "/invocations", json.dumps(body))
            assert status == 200, data[:300]
            return json.loads(data)[0]["generated_text"]
        ours(prompts[0])
        print("ours", server.dtype, flush=True)
        first = []
        for p in prompts:
            t = time.perf_counter()
            server.call("POST", "/invocations", json.dumps({"inputs": p, "parameters": {"max_new_tokens": 1}}))
            first.append(time.perf_counter() - t)
        result = {"ours": {"dtype": server.dtype, "first_token_s": statistics.median(first), "load": run(ours)}}
    finally:
        server.stop()
    from transformers import pipeline
    pipe = pipeline("text-generation", model=model, tokenizer=model, device=0 if device.startswith("cuda") else -1)
    pipe.model.to(torch.float16)

    def theirs(prompt):
        return pipe(prompt, max_new_tokens=new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]
    theirs(prompts[0])
    print("transformers pipeline float16", flush=True)
    first = []
    for p in prompts:
        t = time.perf_counter()
        pipe(p, max_new_tokens=1, do_sample=False)
        first.append(time.perf_counter() - t)
    result["transformers_pipeline"] = {"dtype": "f16", "first_token_s": statistics.median(first), "load": run(theirs)}
    result["model"] = "Llama 1.1B (16 x 2048, 32/8 heads, vocab 49152), random weights, float16"
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "sagemaker-hf-server"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--half-tolerance", type=float, default=1e-2)
    ap.add_argument("--jobs", type=int, default=8, help="golden files replayed at once")
    ap.add_argument("--tokenizer", help="a BERT WordPiece tokenizer folder for the BERT-base model")
    ap.add_argument("--bench-model", help="default: the BERT-base-sized model made from --tokenizer")
    ap.add_argument("--bench-task", default="text-classification")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--generation-tokenizer", help="a SmolLM2 tokenizer folder: run the generation benchmark")
    ap.add_argument("--out", default="gpu-verify.json")
    a = ap.parse_args()
    dtypes = a.dtypes.split(",")
    result = {"device": a.device, "parity": []}
    if not a.skip_parity:
        for dtype in dtypes:
            tolerance = a.tolerance if dtype in ("float32", "f32") else a.half_tolerance
            result["parity"] += parity(a.binary, a.device, dtype, tolerance, a.jobs)
    texts = ["I love this!", "The food was great but the service was slow.",
             "A man is eating a piece of bread.", "This model is used with sagemaker for inference.",
             "Amazon SageMaker is a fully managed service that lets data scientists and developers "
             "build, train and deploy machine learning models quickly, at any scale, in the cloud."]
    model = a.bench_model
    if model is None and a.tokenizer:
        model = make_bert_base(os.path.join(ROOT, "target", "bert-base-random"), a.tokenizer)
    if model and a.bench_task == "text-classification":
        result["pipeline_parity"] = pipeline_parity(a.binary, a.device, dtypes, model, texts)
    if model and not a.skip_bench:
        result["throughput"] = throughput(a.binary, a.device, ["auto", "float32"], model, a.bench_task,
                                          texts, a.seconds)
    if a.generation_tokenizer:
        llama = make_llama_1b(os.path.join(ROOT, "target", "llama-1b-random"), a.generation_tokenizer)
        result["generation"] = generation_bench(a.binary, a.device, llama, a.seconds)
    json.dump(result, open(a.out, "w"), indent=1)
    summary = {}
    for r in result["parity"]:
        s = summary.setdefault(r["dtype"], {"files": 0, "pass": 0, "numeric": 0, "structural": 0, "worst": 0.0})
        s["files"] += 1
        s["pass"] += not (r["failures"] or r["structural"])
        s["numeric"] += bool(r["failures"])
        s["structural"] += bool(r["structural"])
        s["worst"] = max(s["worst"], r["max_difference"])
    print("parity summary:", json.dumps(summary))
    print(f"written {a.out}")
    f32 = summary.get("f32")
    sys.exit(1 if f32 and f32["pass"] != f32["files"] else 0)


if __name__ == "__main__":
    main()
