#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs exactly this). Installs what it needs first.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/kernels -x`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec python -m pytest -q "${@:-tests}"
