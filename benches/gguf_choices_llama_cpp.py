#!/usr/bin/env python3
"""How often llama.cpp's next-token choices agree with transformers' own GGUF loader (weights
dequantized to f32) on the golden that tests/parity_gguf_quants.rs checks ours against
(models/golden/text-generation/smollm2-quants.json: SmolLM2-135M-Instruct in six GGUF types, the
prompts and their greedy continuations, every position's top-1 and top-two margin). llama.cpp
rounds activations to 8 bits as our default int8 block kernels do, so its agreement is the bar
for ours. Run with a Python that has llama-cpp-python:

    python benches/gguf_choices_llama_cpp.py [--threads 2] [--out benches/results/gguf-choices]

Writes OUT.json and OUT.md (llama.cpp's agreement per type; the test prints ours).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "gguf-choices"))
    a = ap.parse_args()
    import llama_cpp
    from llama_cpp import Llama
    golden = json.load(open(os.path.join(ROOT, "models", "golden", "text-generation", "smollm2-quants.json")))
    rows = []
    for entry in golden["files"]:
        path = os.path.join(ROOT, "models", entry["dir"], entry["file"])
        # One token per batch: llama-cpp-python 0.3.36's AMX matmul faults on larger batches
        # (see benches/gguf_vs_llama_cpp.py); batching can change which of its kernels run, so the counts are for this setting.
        llm = Llama(model_path=path, n_threads=a.threads, n_ctx=512, n_batch=1, n_ubatch=1, logits_all=True,
                    verbose=False)
        agree, total, flip_margin = 0, 0, 0.0
        for record in entry["records"]:
            ids, start = record["input_ids"], record["prompt_len"]
            llm.reset()
            llm.eval(ids)
            for k, (want, margin) in enumerate(zip(record["top1"], record["margin"])):
                logits = llm.scores[start - 1 + k]
                ours = int(logits.argmax())
                total += 1
                if ours == want:
                    agree += 1
                else:
                    flip_margin = max(flip_margin, margin)
        rows.append({"type": entry["type"], "agree": agree, "total": total, "largest_flip_margin": flip_margin})
        print(json.dumps(rows[-1]), flush=True)
        del llm
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "llama_cpp_python": llama_cpp.__version__,
              "threads": a.threads, "files": rows}
    json.dump(result, open(a.out + ".json", "w"), indent=1)
    lines = ["# Next-token choices of llama.cpp against transformers' GGUF loader (SmolLM2-135M-Instruct)", "",
             f"{result['date']}, llama-cpp-python {result['llama_cpp_python']}: every position of the golden "
             "prompts and continuations of `models/golden/text-generation/smollm2-quants.json` (teacher-forced), "
             "llama.cpp's argmax against transformers' top-1. Ours: `cargo test --test parity_gguf_quants -- "
             "--nocapture` prints the same count.", "",
             "| type | llama.cpp agrees | largest transformers margin at a flip |", "| --- | --- | --- |"]
    lines += [f"| {r['type']} | {r['agree']}/{r['total']} | {r['largest_flip_margin']:.3f} |" for r in rows]
    lines += ["", "Command: `" + " ".join(["python", "benches/gguf_choices_llama_cpp.py"] + sys.argv[1:]) + "`", ""]
    open(a.out + ".md", "w").write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
