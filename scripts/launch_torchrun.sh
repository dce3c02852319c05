#!/usr/bin/env bash
# The whole WMSS pipeline on several GPUs with torchrun + FSDP2, on one node or several.
#   scripts/launch_torchrun.sh CONFIG OUT_DIR [key=value ...]
# Environment (defaults in brackets):
#   NPROC_PER_NODE  GPUs per node [all visible GPUs]
#   NNODES [1], NODE_RANK [0], MASTER_ADDR [127.0.0.1], MASTER_PORT [29500]
#   BACKEND         fsdp2 | deepspeed [fsdp2] (DeepSpeed ZeRO also runs under torchrun)
# Multi-node: run the same command on every node with its NODE_RANK and the same MASTER_ADDR; OUT_DIR must
# be on a filesystem all nodes share (rank 0 writes the shared files, every rank reads them).
# Every rank runs the training and scoring phases; rank 0 alone writes data/markers/report and runs eval.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,11p' "$0"; exit 2
fi
CONFIG=$1; OUT=$2; shift 2
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
TORCHRUN=${TORCHRUN:-torchrun}
exec "$TORCHRUN" \
    --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$NPROC_PER_NODE" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    -m wdl run "$CONFIG" --out "$OUT" "train.backend=${BACKEND:-fsdp2}" "$@"
