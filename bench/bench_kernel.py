#!/usr/bin/env python
"""Loss benchmark: wdl_kernels.mixed_linear_cross_entropy (both modes) against its baselines, one row per
(case, implementation), written to <out>/results.csv and <out>/results.jsonl (bench/harness.py measures).

    python bench/bench_kernel.py --preset cpu-modes --out runs/cpu-modes   # CPU: fast vs lean, counted FLOPs
    python bench/bench_kernel.py --preset smoke --out /tmp/smoke           # anywhere, seconds: every path runs
    python bench/bench_kernel.py --preset sweep --out runs/sweep           # GPU: Qwen3 H x N x heads grid
    python bench/bench_kernel.py --hidden 2560 --tokens 16384 --heads 2 --tasks fwdbwd \
        --impls ours_triton_fast,ours_triton_lean,liger_fp32acc          # GPU: any grid

The one GPU call that judges every target is scripts/gpu_call.py (bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` (and the checkout's packages) importable
    _root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_root), str(_root / "kernels")]

import torch  # noqa: E402

# Without CUDA, Triton kernels run in its interpreter, chosen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.cases import TASKS, LossCase  # noqa: E402
from bench.env import env_info  # noqa: E402
from bench.harness import COLUMNS, Harness  # noqa: E402
from bench.impls import BASELINES, OURS, build_impls  # noqa: E402
from bench.timing import TimingConfig  # noqa: E402
from bench.writer import ResultsWriter  # noqa: E402

QWEN3_VOCAB = 151936
QWEN3_HIDDEN = (1024, 2048, 2560, 4096)
TOKENS = (4096, 8192, 16384)

# The CPU benchmark of the two modes: GEMM-bound (H large against the elementwise work per logit), small
# enough for a shared 2-core machine, V not a multiple of any block.
CPU_MODES_CASES = ((2048, 8000, 512, 512), (2048, 8000, 1024, 0))
CPU_MODES_IMPLS = ("ours_torch_fast", "ours_torch_lean")
SMOKE_IMPLS = ("ours_torch_fast", "ours_torch_lean", "ours_triton_fast", "ours_triton_lean", "eager",
               "compile_chunked", "compile_chunked_gif", "liger", "liger_fp32acc", "cce", "cce_nofilter")
SWEEP_IMPLS = ("ours_triton_fast", "ours_triton_lean", "compile_chunked_gif", "liger_fp32acc")
PRESETS = ("cpu-modes", "smoke", "sweep")


def preset_cases(preset: str, args) -> list[tuple[LossCase, tuple[str, ...]]]:
    """The cases of a preset, most telling first, each with the implementations it runs."""
    if preset == "cpu-modes":
        return [(LossCase(n=n, vocab=v, hs=hs, hw=hw, task="fwdbwd", dtype="fp32"), CPU_MODES_IMPLS)
                for n, v, hs, hw in CPU_MODES_CASES]
    if preset == "smoke":
        return [(LossCase(n=64, vocab=500, hs=32, hw=hw, task=task, dtype="fp32", ignore_frac=0.1), SMOKE_IMPLS)
                for task in TASKS for hw in (32, 0)]
    if preset == "sweep":
        return [(LossCase(n=n, vocab=QWEN3_VOCAB, hs=h, hw=h if heads == 2 else 0, task=task), SWEEP_IMPLS)
                for task in ("fwdbwd", "score") for n in sorted(TOKENS, reverse=True) for heads in (2, 1)
                for h in QWEN3_HIDDEN]
    raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")


def grid_cases(args) -> list[tuple[LossCase, tuple[str, ...]]]:
    names = tuple(args.impls or ("ours_triton_fast", "ours_triton_lean"))
    return [(LossCase(n=n, vocab=args.vocab, hs=h, hw=h if heads == 2 else 0, task=task, dtype=args.dtype,
                      lam=args.lam, ignore_frac=args.ignore_frac), names)
            for task in args.tasks for n in sorted(args.tokens, reverse=True) for heads in args.heads
            for h in args.hidden]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _names(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Implementations: " + ", ".join(OURS + tuple(BASELINES)) + ".")
    ap.add_argument("--preset", choices=PRESETS, help="a predefined case list (or give --hidden and --tokens)")
    ap.add_argument("--hidden", type=_ints, help="hidden sizes, e.g. 1024,2560")
    ap.add_argument("--tokens", type=_ints, help="token counts N, e.g. 4096,16384")
    ap.add_argument("--heads", type=_ints, default=[2, 1], help="1 and/or 2")
    ap.add_argument("--tasks", type=_names, default=["fwdbwd"], help=f"from {','.join(TASKS)}")
    ap.add_argument("--impls", type=_names, help="implementations for every case (replaces the preset's)")
    ap.add_argument("--vocab", type=int, default=QWEN3_VOCAB)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--ignore-frac", type=float, default=0.0, help="fraction of ignored (-100) labels")
    ap.add_argument("--chunk-rows", type=int, default=2048, help="token chunk of the torch.compile baselines")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="at most this many timed repetitions")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--rep-budget-s", type=float, default=10.0, help="target seconds of timed reps per row")
    ap.add_argument("--check-n", type=int, default=512, help="rows of the correctness check")
    ap.add_argument("--cpu", action="store_true", help="run a --hidden/--tokens grid on the CPU")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-kernel", help="output directory (results.csv / results.jsonl)")
    ap.add_argument("--label", help="free-text label stored in every row")
    ap.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    args = ap.parse_args(argv)
    if not args.preset and not (args.hidden and args.tokens):
        ap.error("give --preset, or --hidden and --tokens")
    bad = set(args.tasks) - set(TASKS)
    if bad:
        ap.error(f"--tasks: unknown {sorted(bad)}; choose from {TASKS}")
    if set(args.heads) - {1, 2}:
        ap.error("--heads takes 1 and/or 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_preset = args.preset in ("cpu-modes", "smoke") or args.cpu
    if not cpu_preset and not torch.cuda.is_available():
        raise SystemExit("bench_kernel: no CUDA device here; on a CPU use --preset cpu-modes, --preset smoke or --cpu")
    device = torch.device("cpu") if cpu_preset else torch.device("cuda", torch.cuda.current_device())
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = preset_cases(args.preset, args) if args.preset else grid_cases(args)
    if args.impls and args.preset:
        plan = [(case, tuple(args.impls)) for case, _ in plan]
    impls = {i.name: i for i in build_impls(sorted({n for _, names in plan for n in names}), args.chunk_rows,
                                            use_compile=args.preset != "smoke")}
    smoke = args.preset == "smoke"
    timing = TimingConfig(warmup=1 if smoke else args.warmup, reps=2 if smoke else args.reps,
                          min_reps=1 if smoke else min(args.min_reps, args.reps), rep_budget_s=args.rep_budget_s,
                          flush_l2=device.type == "cuda")
    env = env_info(device)
    label = args.label or {"cpu-modes": "CPU benchmark of the two modes (torch backend)",
                           "smoke": "CPU smoke (tiny shapes; not a performance result)"}.get(args.preset, "GPU")
    harness = Harness(device, env, timing, check_n=16 if smoke else args.check_n, seed=args.seed, label=label,
                      interleave=args.preset == "cpu-modes")
    writer = ResultsWriter(args.out, COLUMNS)
    harness.log(f"{len(plan)} cases on {env['device_name']} ({env['device_type']}), commit "
                f"{(env['git_commit'] or 'unknown')[:12]}{' (dirty)' if env['git_dirty'] else ''}, "
                f"{torch.get_num_threads()} threads; writing {writer.jsonl_path}")
    for case, names in plan:
        writer.append(harness.run_case(case, [impls[n] for n in names], stage=args.preset or "grid"))
    if not args.no_table:
        from bench.plot import format_table, load_rows
        from bench.targets import format_verdicts

        rows = load_rows([writer.jsonl_path])
        print(format_table(rows))
        print()
        print(format_verdicts(rows, "cpu" if cpu_preset else "gpu"))
    if harness.wrong:
        print("REFUSED (failed the correctness check): " + "; ".join(harness.wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
