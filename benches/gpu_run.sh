#!/usr/bin/env bash
# The GPU check as one command, for a GPU machine with PyTorch but no Rust (see gpu_verify.py):
#
#   benches/gpu_run.sh KIT OUT
#
# KIT holds the `--features cuda` binary (sagemaker-hf-server) and a BERT WordPiece tokenizer
# folder (tokenizer/), optionally a SmolLM2 tokenizer folder (smollm2-tokenizer/, for the generation
# benchmark); OUT receives gpu-verify.json and the log. The CUDA libraries the binary
# links (cuBLAS 13, cuRAND 10) are taken from this machine's PyTorch wheels, not carried.
# Making the kit, on the build machine (models/fetch_models.sh provides the tokenizer):
#
#   eval "$(docker/cuda-toolchain.sh)"
#   cargo build --release --features cuda --target-dir target/cuda
#   mkdir -p target/gpu-kit/tokenizer
#   strip -o target/gpu-kit/sagemaker-hf-server target/cuda/release/sagemaker-hf-server
#   cp models/all-MiniLM-L6-v2/{tokenizer*.json,vocab.txt,special_tokens_map.json} target/gpu-kit/tokenizer/
#   mkdir -p target/gpu-kit/smollm2-tokenizer
#   cp models/smollm2-135m-instruct/{tokenizer*.json,chat_template.jinja} target/gpu-kit/smollm2-tokenizer/
#   # the Rust GPU tests: the executable `cargo test --release --features cuda --test gpu --no-run`
#   # prints, stripped to target/gpu-kit/gpu-tests
set -uo pipefail
KIT=$(cd "$1" && pwd)
OUT=$2
mkdir -p "$OUT"
lib=$(dirname "$(find / -xdev -name 'libcublas.so.13' -path '*nvidia*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "CUDA libraries: $lib"
ldd "$KIT/sagemaker-hf-server" | grep -E 'not found|cublas|curand|libcuda' || true
# Smoke: does it start on the GPU at all, and how long does the first start take (PTX JIT)?
start=$(date +%s%N)
SERVER_DEVICE=cuda HF_MODEL_ID=models/tiny/bert-cls HF_TASK=text-classification \
  SAGEMAKER_BIND_TO_PORT=18080 SERVER_BIND_ADDRESS=127.0.0.1 "$KIT/sagemaker-hf-server" serve \
  >"$OUT/smoke.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  curl -sf -D - http://127.0.0.1:18080/ping -o /dev/null 2>/dev/null | grep -i '^x-d' && break
  sleep 0.1
done
echo "first start: $(( ($(date +%s%N) - start) / 1000000 )) ms"
curl -s http://127.0.0.1:18080/invocations -H 'Content-Type: application/json' -d '{"inputs":"I love this!"}'
echo
kill $pid; wait $pid 2>/dev/null
tail -5 "$OUT/smoke.log"
# The Rust GPU tests (tests/gpu.rs), when the kit carries their executable as gpu-tests.
if [ -x "$KIT/gpu-tests" ]; then
  SAGEMAKER_HF_GPU_TESTS=1 SAGEMAKER_HF_SERVER_BIN="$KIT/sagemaker-hf-server" SAGEMAKER_HF_REPO_DIR="$PWD" \
    "$KIT/gpu-tests" --test-threads 2 2>&1 | tee "$OUT/gpu-tests.log"
  [ "${GPU_TESTS_ONLY:-0}" = 1 ] && exit 0
fi
generation=()
[ -d "$KIT/smollm2-tokenizer" ] && generation=(--generation-tokenizer "$KIT/smollm2-tokenizer")
python3 benches/gpu_verify.py --binary "$KIT/sagemaker-hf-server" --tokenizer "$KIT/tokenizer" \
  "${generation[@]}" --out "$OUT/gpu-verify.json" "${@:3}" 2>&1 | tee "$OUT/gpu-verify.log"
