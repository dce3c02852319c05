#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the project into it.
# Usage: source scripts/setup_env.sh        (activates .venv; set WDL_VENV to use another folder)
# On CPU machines torch==2.13.0 is installed first: an unpinned torch would pull a multi-GB CUDA build.
# Where a torch is already importable (a GPU image), it is kept.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${WDL_VENV:-$_root/.venv}"
_py="${PYTHON:-python3}"
if [ ! -x "$_venv/bin/python" ]; then
    if "$_py" -c "import torch" 2>/dev/null; then
        "$_py" -m venv --system-site-packages "$_venv"   # keep the image's torch/triton (GPU machines)
    else
        "$_py" -m venv "$_venv"
    fi
fi
# shellcheck disable=SC1091
source "$_venv/bin/activate"
_stamp="$_venv/.wdl-installed"
_sig="$(cat "$_root/pyproject.toml" "$_root/kernels/pyproject.toml" | sha1sum | cut -c1-16)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_sig" ]; then
    python -m pip install -q --upgrade pip
    python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
    # The project includes the kernel library (wdl_kernels); a separate wdl-kernels install would shadow it.
    python -m pip uninstall -q -y wdl-kernels 2>/dev/null || true
    python -m pip install -q -e "$_root[test,deepspeed]"
    echo "$_sig" > "$_stamp"
fi
cd "$_root"
