#!/usr/bin/env bash
# A/B of two release binaries of this server on the same model, interleaved in one run (so both
# see the same machine): wrk at 1 and 16 connections, keep-alive, one short text.
#   benches/ab.sh OLD_BINARY NEW_BINARY [MODEL_DIR] [ROUNDS] [SECONDS]
# Build the old one from another checkout with the same target directory, e.g.
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=$PWD/target cargo build --release)
# Loopback only; bounded: ROUNDS x 2 binaries x (2 + 2 x SECONDS) s.
set -euo pipefail
old=$1 new=$2 model=${3:-models/minilm-l6-cls} rounds=${4:-2} seconds=${5:-6}
cd "$(dirname "$0")/.."
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=${!which}
    port=$((18000 + RANDOM % 1000))
    SAGEMAKER_BIND_TO_PORT=$port SERVER_BIND_ADDRESS=127.0.0.1 RUST_LOG=error "$bin" serve --model-id "$model" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 300); do curl -sf "localhost:$port/ping" >/dev/null && break; sleep 0.1; done
    wrk -t1 -c4 -d2s -s benches/wrk-post.lua "http://127.0.0.1:$port/invocations" >/dev/null 2>&1
    for c in 1 16; do
      r=$(wrk -t1 -c"$c" -d"${seconds}s" -s benches/wrk-post.lua "http://127.0.0.1:$port/invocations" 2>/dev/null | awk '/Requests\/sec/{print $2}')
      echo "round $round $which c=$c req/s $r"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
