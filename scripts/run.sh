#!/usr/bin/env bash
# The main job (README "Run it"): installs what it needs, then runs the whole WMSS pipeline.
# No arguments: the embedded default (tiny Qwen3, bundled synthetic data, CPU, minutes) into runs/default.
# Otherwise the arguments go to `wdl run`, e.g. `bash scripts/run.sh configs/my.yaml --out runs/x train.lr=2e-5`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
if [ "$#" -eq 0 ]; then
    set -- --out runs/default
fi
exec wdl run "$@"
