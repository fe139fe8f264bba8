#!/usr/bin/env bash
# Run the CPU image locally the way SageMaker does: the model directory mounted at
# /opt/ml/model, `serve` as the command, port 8080.
#   docker/run-local.sh MODEL_DIR [IMAGE]        (IMAGE defaults to sagemaker-hf-server)
# Then: curl -s localhost:8080/ping; curl -s localhost:8080/invocations \
#         -H 'Content-Type: application/json' -d '{"inputs": "I love this!"}'
set -euo pipefail
model=$(cd "${1:?usage: $0 MODEL_DIR [IMAGE]}" && pwd)
image=${2:-sagemaker-hf-server}
exec docker run --rm -p 8080:8080 -v "$model:/opt/ml/model:ro" "$image" serve
