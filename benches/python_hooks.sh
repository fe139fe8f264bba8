#!/usr/bin/env bash
# Custom inference code's cost (issue 13): MiniLM's classifier (models/minilm-l6-cls) served
#   native   : this server, no script
#   python   : this server, with tests/fixtures/python/passthrough (input_fn = json.loads,
#              output_fn = json.dumps, the native pipeline in between), SERVER_PYTHON_THREADS default
#   dlc      : the Python DLC (../shared/peer) with the same script
# wrk at 1 and 16 connections, keep-alive, one short text (benches/wrk-post.lua); native and
# python interleaved over ROUNDS, the DLC once (it starts in ~30 s). One binary for both of ours:
#   cargo build --release --features python
#   benches/python_hooks.sh [ROUNDS] [SECONDS] [BINARY]
# Loopback only; bounded: ROUNDS x 2 x (2 + 2 x SECONDS) s + the DLC's start and run.
set -euo pipefail
rounds=${1:-3} seconds=${2:-10} bin=${3:-target/release/sagemaker-hf-server}
cd "$(dirname "$0")/.."
model=$(realpath models/minilm-l6-cls)
scripted=$(mktemp -d)
trap 'rm -rf "$scripted"' EXIT
for f in "$model"/*; do ln -s "$(realpath "$f")" "$scripted/$(basename "$f")"; done
cp -r tests/fixtures/python/passthrough/code "$scripted/code"

run_wrk() { # PORT CONNECTIONS -> req/s
  wrk -t1 -c"$2" -d"${seconds}s" -s benches/wrk-post.lua "http://127.0.0.1:$1/invocations" 2>/dev/null |
    awk '/Requests\/sec/{print $2}'
}

echo "uptime: $(uptime)"
for round in $(seq "$rounds"); do
  for which in native python; do
    dir=$model; [ "$which" = python ] && dir=$scripted
    port=$((18000 + RANDOM % 1000))
    HF_TASK=text-classification SAGEMAKER_BIND_TO_PORT=$port SERVER_BIND_ADDRESS=127.0.0.1 RUST_LOG=error \
      "$bin" serve --model-id "$dir" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 600); do curl -sf "localhost:$port/ping" >/dev/null && break; sleep 0.1; done
    wrk -t1 -c4 -d2s -s benches/wrk-post.lua "http://127.0.0.1:$port/invocations" >/dev/null 2>&1
    for c in 1 16; do echo "round $round $which c=$c req/s $(run_wrk "$port" "$c")"; done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

if [ "${SKIP_PEER:-0}" != 1 ]; then
  port=8392
  ../shared/peer/start-peer.sh "$scripted" text-classification "$port" >/dev/null
  wrk -t1 -c4 -d2s -s benches/wrk-post.lua "http://127.0.0.1:$port/invocations" >/dev/null 2>&1
  for c in 1 16; do echo "dlc c=$c req/s $(run_wrk "$port" "$c")"; done
  ../shared/peer/stop-peer.sh "$port"
fi
echo "uptime: $(uptime)"
