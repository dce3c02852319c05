#!/usr/bin/env bash
# One GPU session's work, run from the repository root on the GPU machine through the device tool:
# install the carried wheels, print the device, run the GPU kernel tests, the Hopper compile/resource check,
# and the kernel benchmark stages, each under a time guard, writing everything to $OUT and printing a short
# table last. bench/README.md says how to call it and how to commit what comes back.
#
#   bash scripts/gpu_session.sh [--stages LIST] [--budget SECONDS] [--dry-run]
#
#   --stages   comma-separated, run in this order (default: tests,sm90,target):
#                tests         pytest tests/kernels -m gpu            -> $OUT/pytest_gpu.log
#                tests-all     pytest tests/kernels (all, compiled)   -> $OUT/pytest_gpu.log
#                sm90          python scripts/check_sm90.py           -> $OUT/check_sm90.json
#                target        bench preset 'target' (issue 2's target shapes, all baselines)
#                sweep-fwdbwd  bench preset 'sweep-fwdbwd' (Qwen3 H x N grid, fwd+bwd)
#                sweep-score   bench preset 'sweep-score' (forward-only scoring grid)
#                e2e           bench_e2e: 2x Qwen3-1.7B joint, fused vs reference path, AC off/on, 4096/8192
#                e2e-maxseq    bench_e2e: the longest sequence each path fits (2x1.7B joint, AC on)
#                e2e-offload   bench_e2e: 2x Qwen3-4B, weak frozen, FSDP2 CPU offload, 8192 tokens
#              (an e2e stage's rows land in $OUT/e2e.jsonl; kernel and e2e stages can share a call)
#   --budget   wall seconds for this whole invocation (default 540; one device call may run 600)
#   --dry-run  CPU rehearsal of the same stages and commands: the benchmark in --cpu mode, the GPU tests
#              (all skipped without CUDA), check_sm90.py byte-compiled only (WDL_DRY_RUN_FULL=1: the real
#              check, which also works without a GPU).
#              Writes to $OUT if set, else a fresh /tmp directory.
# Environment: PYTHON (default python3), WDL_WHEELS (default .whl), WDL_SITE (default /tmp/site),
#              WDL_KERNEL_TESTS (default tests/kernels), WDL_BENCH_EXTRA (extra bench_kernel.py arguments),
#              WDL_SKIP_DONE (default .gpu/done.jsonl: results of earlier calls, not measured again),
#              WDL_E2E_EXTRA (extra bench_e2e.py arguments).
# Files in $OUT (at most 8 come back): results.csv results.jsonl summary.md kernel_bench.png session.log
#                                      pytest_gpu.log check_sm90.json; e2e stages: e2e.csv e2e.jsonl e2e.png
#                                      e2e_summary.md (give them a call of their own)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGES="tests,sm90,target"
BUDGET=540
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --stages) STAGES="${2:?--stages needs a value}"; shift 2 ;;
        --stages=*) STAGES="${1#*=}"; shift ;;
        --budget) BUDGET="${2:?--budget needs a value}"; shift 2 ;;
        --budget=*) BUDGET="${1#*=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_session: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_session: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
for s in ${STAGES//,/ }; do
    case "$s" in
        tests|tests-all|sm90|target|sweep-fwdbwd|sweep-score|e2e|e2e-maxseq|e2e-offload) ;;
        *) echo "gpu_session: unknown stage '$s'; choose from tests,tests-all,sm90,target,sweep-fwdbwd,sweep-score," \
                "e2e,e2e-maxseq,e2e-offload" >&2
           exit 2 ;;
    esac
done

if [ -z "${OUT:-}" ]; then
    if [ "$DRY" = 1 ]; then OUT="$(mktemp -d /tmp/wdl-gpu-dry-run.XXXXXX)"; else
        echo "gpu_session: \$OUT is not set (the device tool sets it; elsewhere pass OUT=DIR)" >&2; exit 2; fi
fi
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WHEELS="${WDL_WHEELS:-$ROOT/.whl}"
SITE="${WDL_SITE:-/tmp/site}"
if [ "$DRY" = 1 ] && [ -z "${WDL_SITE:-}" ]; then   # a throw-away install target for the rehearsal
    SITE="$(mktemp -d /tmp/wdl-gpu-dry-site.XXXXXX)"
    trap 'rm -rf "$SITE"' EXIT
fi
BENCH_EXTRA="${WDL_BENCH_EXTRA:-}"
E2E_EXTRA="${WDL_E2E_EXTRA:-}"
KERNEL_TESTS="${WDL_KERNEL_TESTS:-tests/kernels}"
DONE="${WDL_SKIP_DONE:-$ROOT/.gpu/done.jsonl}"   # rows returned by earlier calls (scripts/gpu_prepare.py --done)
declare -A STATUS=()

remaining() { echo $(( BUDGET - SECONDS )); }
say() { printf '\n=== [%4ds] %s\n' "$SECONDS" "$*"; }

setup() {
    say "setup (dry run: $DRY, budget ${BUDGET}s, out $OUT)"
    cd "$ROOT" || return 1
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -gt 0 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}" || { echo "wheel install failed"; return 1; }
        echo "installed ${#wheels[@]} wheels into $SITE: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
    else
        echo "no wheels in $WHEELS: baselines that are not installed will be reported as 'missing'"
    fi
    # The checkout's packages first (wdl_kernels from kernels/, bench and wdl from the root), then the wheels.
    export PYTHONPATH="$ROOT:$ROOT/kernels:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    "$PY" - <<'EOF'
import torch, importlib.metadata as md
from bench.common import env_info
env = env_info()
print("device:", env["device_name"], f"x{env['device_count']}" if env["device_count"] else "",
      f"SMs={env['sm_count']} mem={env['device_memory_gib']} GiB" if env["sm_count"] else "")
print("commit:", env["git_commit"], "(dirty)" if env["git_dirty"] else "", "from", env["source"])
print(f"python {env['python_version']}, torch {env['torch_version']}, triton {env['triton_version']}, "
      f"CUDA {env['cuda_version']}, driver {env['driver_version']}, transformers {env['transformers_version']}")
print(f"liger-kernel {env['liger_kernel_version']}, cut-cross-entropy {env['cut_cross_entropy_version']}")
import wdl_kernels
print("wdl_kernels from", wdl_kernels.__file__)
EOF
    local rc=$?
    if command -v nvidia-smi >/dev/null 2>&1; then   # read-only queries; never change the card's settings
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
            --format=csv 2>&1 | head -5
    fi
    return $rc
}

stage_tests() {
    local marker=("$@")
    if [ ! -d "$KERNEL_TESTS" ]; then echo "$KERNEL_TESTS does not exist yet"; return 0; fi
    local cap=$(( $(remaining) - 60 )); [ $cap -gt 240 ] && cap=240
    if [ $cap -lt 30 ]; then echo "not enough time left for the tests"; return 3; fi
    timeout "$cap" "$PY" -m pytest "$KERNEL_TESTS" "${marker[@]}" -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
    local rc=${PIPESTATUS[0]}
    [ $rc -eq 5 ] && { echo "(no tests selected)"; rc=0; }
    return $rc
}

stage_sm90() {
    if [ ! -f scripts/check_sm90.py ]; then echo "scripts/check_sm90.py does not exist yet"; return 0; fi
    if [ "$DRY" = 1 ] && [ "${WDL_DRY_RUN_FULL:-0}" != 1 ]; then   # the real check takes ~20 s on a CPU
        "$PY" -c 'import sys; compile(open(sys.argv[1]).read(), sys.argv[1], "exec")' scripts/check_sm90.py &&
            echo "check_sm90.py compiles (dry run; WDL_DRY_RUN_FULL=1 runs it)"
        return $?
    fi
    local cap=$(( $(remaining) - 60 )); [ $cap -gt 180 ] && cap=180
    if [ $cap -lt 20 ]; then echo "not enough time left for check_sm90"; return 3; fi
    timeout "$cap" "$PY" scripts/check_sm90.py --json "$OUT/check_sm90.json"
}

stage_bench() {
    local preset="$1"
    # Keep ~45 s for plotting and the table; the benchmark stops starting new work 90 s before its hard limit.
    local hard=$(( $(remaining) - 45 ))
    local soft=$(( hard - 90 ))
    if [ "$DRY" = 1 ]; then soft=$(( hard - 5 )); fi
    if [ $soft -lt 20 ]; then echo "not enough time left for the $preset benchmark"; return 3; fi
    local cpu=(); [ "$DRY" = 1 ] && cpu=(--cpu)
    local resume=(); [ -s "$DONE" ] && resume=(--skip-done "$DONE") && echo "resuming: skipping what $DONE holds"
    # shellcheck disable=SC2086  # BENCH_EXTRA is a list of words on purpose
    timeout "$hard" "$PY" bench/bench_kernel.py "${cpu[@]}" --preset "$preset" --out "$OUT" \
        --time-budget "$soft" --no-table "${resume[@]}" $BENCH_EXTRA
}

stage_e2e() {
    # Issue 3's targets. Rows are appended as they are measured, so a stage cut by its time guard keeps what it
    # measured; the report at the end of the call is built from $OUT/e2e.jsonl either way.
    local args=()
    case "$1" in
        e2e) args=(--modes joint --paths fused,reference --ac 0,1 --micro-batch 1) ;;
        e2e-maxseq) args=(--modes joint --paths fused,reference --ac 1 --max-seq-only) ;;
        e2e-offload) args=(--modes joint_frozen --paths fused --ac 1 --backend fsdp2 --fsdp-cpu-offload) ;;
    esac
    if [ "$DRY" = 1 ]; then
        args+=(--cpu --seq 32 --warmup 0 --steps 1)
    else
        case "$1" in
            e2e) args+=(--models 1.7b --seq 4096,8192) ;;
            e2e-maxseq) args+=(--models 1.7b --seq-granularity 4096) ;;
            e2e-offload) args+=(--models 4b --seq 8192 --warmup 1 --steps 3) ;;
        esac
    fi
    local hard=$(( $(remaining) - 45 ))
    if [ $hard -lt 60 ]; then echo "not enough time left for $1"; return 3; fi
    # shellcheck disable=SC2086  # E2E_EXTRA is a list of words on purpose
    timeout "$hard" "$PY" bench/bench_e2e.py "${args[@]}" --out "$OUT" --no-plot $E2E_EXTRA
}

main() {
    local order=() rc
    setup; rc=$?
    STATUS[setup]=$rc; order+=(setup)
    if [ $rc -ne 0 ]; then echo "setup failed (rc $rc): nothing else runs"; return 1; fi
    for s in ${STAGES//,/ }; do
        say "$s ($(remaining)s left)"
        case "$s" in
            tests) stage_tests -m gpu ;;
            tests-all) stage_tests ;;
            sm90) stage_sm90 ;;
            target|sweep-fwdbwd|sweep-score) stage_bench "$s" ;;
            e2e|e2e-maxseq|e2e-offload) stage_e2e "$s" ;;
        esac
        rc=$?
        STATUS[$s]=$rc; order+=("$s")
    done
    say "stage status (0 = ok, 3 = skipped for time, 124 = hit its time limit, 1 = failed / refused)"
    local worst=0
    for s in "${order[@]}"; do
        printf '  %-13s rc=%s\n' "$s" "${STATUS[$s]}"
        [ "${STATUS[$s]}" -ne 0 ] && [ "${STATUS[$s]}" -ne 3 ] && worst=1
    done
    if [ -f "$OUT/results.jsonl" ]; then
        say "results ($OUT)"
        "$PY" bench/plot.py "$OUT/results.jsonl" --out "$OUT" || worst=1
    fi
    if [ -f "$OUT/e2e.jsonl" ]; then
        say "end-to-end results ($OUT)"
        rm -f "$OUT"/e2e_summary_*.md   # per-stage summaries (in session.log): one over all rows replaces them
        "$PY" bench/bench_e2e.py --report "$OUT/e2e.jsonl" --out "$OUT" || worst=1
    fi
    if [ ! -f "$OUT/results.jsonl" ] && [ ! -f "$OUT/e2e.jsonl" ]; then
        echo "no benchmark results in $OUT"
    fi
    return $worst
}

main 2>&1 | tee -a "$OUT/session.log"
exit "${PIPESTATUS[0]}"
