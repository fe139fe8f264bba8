#!/usr/bin/env bash
# A/B of two release binaries on text generation, interleaved in one run (so both see the same
# machine): benches/load_generation.py against ours only, on the SmolLM2-135M-Instruct GGUF, at the
# given client counts, ROUNDS times each binary alternately; `uptime` before every measurement.
#   benches/ab_generation.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS] [CLIENTS]
# Build the old one in its own worktree, sharing a target directory, e.g.
#   git worktree add --detach /work/ab-old REV && (cd /work/ab-old && CARGO_TARGET_DIR=/work/ab-target cargo build --release)
# Needs the peer venv's python (tokenizers): PYTHON=... to use another.
set -euo pipefail
old=$1 new=$2 rounds=${3:-2} seconds=${4:-15} clients=${5:-1}
cd "$(dirname "$0")/.."
py=${PYTHON:-$HOME/.cache/dlc-peer/venv/bin/python}
mkdir -p benches/results/tmp
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=${!which}
    echo "round $round $which: $(uptime)"
    SERVER_BINARY=$bin "$py" benches/load_generation.py --skip-peer --conc "$clients" --duration "$seconds" \
      --out "benches/results/tmp/ab-$which-$round" | grep '^| [0-9]' | sed "s/^/round $round $which /"
  done
done
