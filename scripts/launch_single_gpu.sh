#!/usr/bin/env bash
# The whole WMSS pipeline on one GPU.
#   scripts/launch_single_gpu.sh CONFIG OUT_DIR [key=value ...]
#   e.g. scripts/launch_single_gpu.sh qwen3-1.7b runs/q17 data.sources=[/data/math.jsonl]
# CONFIG is a YAML file or a preset name (tiny, qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b).
# Rerunning the same command resumes an interrupted run (complete phases are skipped).
# BACKEND=deepspeed with train.zero_stage/offload_optimizer trains larger models on one GPU (ZeRO-Offload).
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,7p' "$0"; exit 2
fi
CONFIG=$1; OUT=$2; shift 2
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m wdl run "$CONFIG" --out "$OUT" "train.backend=${BACKEND:-single}" "$@"
