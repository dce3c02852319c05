#!/usr/bin/env bash
# The whole WMSS pipeline with the DeepSpeed launcher and ZeRO-2/3 (training phases use train.backend=deepspeed).
#   scripts/launch_deepspeed.sh CONFIG OUT_DIR [key=value ...]
# Environment (defaults in brackets):
#   NUM_GPUS [all visible GPUs], ZERO_STAGE 2 | 3 [3], OFFLOAD_OPTIMIZER true | false [false]
#   HOSTFILE        a DeepSpeed hostfile ("host slots=8" per line) for several nodes [none: this node only]
#   MASTER_ADDR [127.0.0.1], MASTER_PORT [29500]
# Several nodes need passwordless ssh (pdsh) from this node and OUT_DIR on a shared filesystem; without
# them use scripts/launch_torchrun.sh with BACKEND=deepspeed on every node instead.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,10p' "$0"; exit 2
fi
CONFIG=$1; OUT=$2; shift 2
if [ -z "${NUM_GPUS:-}" ]; then
    NUM_GPUS=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
HOSTS=()
if [ -n "${HOSTFILE:-}" ]; then
    HOSTS=(--hostfile "$HOSTFILE")
fi
exec deepspeed "${HOSTS[@]}" --num_gpus "$NUM_GPUS" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --no_local_rank --module wdl run "$CONFIG" --out "$OUT" \
    train.backend=deepspeed "train.zero_stage=${ZERO_STAGE:-3}" \
    "train.offload_optimizer=${OFFLOAD_OPTIMIZER:-false}" "$@"
