#!/usr/bin/env python
"""Kernel benchmark: wdl_kernels.mixed_linear_cross_entropy against its baselines, over Qwen3 shapes.

For every case (tokens N, vocabulary V, one or two heads of hidden size H, mode fwd / fwdbwd / score) it
measures, in one process: the cuBLAS GEMM rate at the logits shape (the roofline), our kernel (impl="triton",
and impl="torch" where affordable), and the baselines (eager reference path, torch.compile of a chunked loss
in two styles, Liger-Kernel, cut-cross-entropy). Each implementation is first checked against a float64
reference at a small N with the case's V and H; a result from our kernel that fails the check is not
recorded (status "wrong", exit status 1). Rows go to <out>/results.csv and <out>/results.jsonl.

    python bench/bench_kernel.py --preset target --out runs/bench           # GPU: the issue's target shapes
    python bench/bench_kernel.py --preset sweep-fwdbwd --time-budget 420    # GPU: the shape sweep, time-guarded
    python bench/bench_kernel.py --cpu --out /tmp/bench-cpu                 # anywhere, seconds (tiny shapes, fp32)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` (and the checkout's packages) importable
    _root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_root), str(_root / "kernels")]

# The Triton interpreter must be chosen before anything imports triton (torch imports it lazily).
if "--cpu" in sys.argv[1:]:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    ENV_COLUMNS,
    GIB,
    L2Flusher,
    ResultsWriter,
    TimingConfig,
    env_info,
    free_device_memory,
    is_oom,
    measure_memory,
    oom_tried_bytes,
    run_id,
    time_fn,
)
from bench.kernel_cases import (  # noqa: E402
    MODES,
    Case,
    Checker,
    LazyReference,
    gemm_flops,
    make_inputs,
    refresh_inputs,
)
from bench.kernel_impls import BASELINES, OURS, Impl, build_impls  # noqa: E402

QWEN3_VOCAB = 151936
QWEN3_HIDDEN = (1024, 2048, 2560, 4096)
TOKENS = (4096, 8192, 16384)
CPU_VOCAB = 500  # not a multiple of any tile

CASE_COLUMNS = ("run_id", "label", "case", "mode", "heads", "n", "vocab", "hs", "hw", "dtype", "lam", "ignore_frac")
IMPL_COLUMNS = ("impl", "kind", "exact", "status", "note")
TIMING_COLUMNS = ("reps", "ms_median", "ms_p20", "ms_p80", "first_call_s", "flops", "tflops", "gemm_tflops",
                  "pct_gemm")
SPEEDUP_COLUMNS = tuple(f"speedup_vs_{b}" for b in BASELINES)
MEMORY_COLUMNS = ("mem_inputs_bytes", "mem_outputs_bytes", "mem_extra_bytes", "mem_peak_bytes",
                  "mem_needed_bytes_min")
CHECK_COLUMNS = ("check_n", "check_ok", "check_err_loss", "check_err_grad", "check_err_entropy", "check_err_nll")
COLUMNS = (ENV_COLUMNS + CASE_COLUMNS + IMPL_COLUMNS + TIMING_COLUMNS + SPEEDUP_COLUMNS + MEMORY_COLUMNS
           + CHECK_COLUMNS)

# --------------------------------------------------------------------------------------------------------
# Which cases


def _grid(hidden, tokens, heads, modes, vocab, dtype, lam, ignore_frac) -> list[Case]:
    """Ordered so that the most telling cases come first (a time budget cuts the tail)."""
    cases = []
    for mode in modes:
        for n in sorted(tokens, reverse=True):
            for h_count in heads:
                for h in hidden:
                    cases.append(Case(n=n, vocab=vocab, hs=h, hw=h if h_count == 2 else 0, mode=mode, dtype=dtype,
                                      lam=lam, ignore_frac=ignore_frac))
    return cases


# What runs on each case: implementation names (ours_<impl> and baseline names), chosen per case so that a
# preset fits a device call; --impls / --baselines on the command line replace them for every case.
ALL = ("ours_triton", "ours_torch", *BASELINES)
TWO_HEAD_SWEEP = ("ours_triton", "eager", "compile_chunked_gif", "liger")
ONE_HEAD_SWEEP = ("ours_triton", "eager", "compile_chunked_gif", "liger", "cce", "cce_nofilter")
SCORE_SWEEP = ("ours_triton", "eager")
PRESETS = ("target", "sweep-fwdbwd", "sweep-score", "sweep")
FINAL_STATUSES = ("ok", "OOM", "missing", "unsupported", "wrong")

Plan = list  # [(Case, tuple of implementation names)]


def preset_plan(preset: str, args) -> Plan:
    """The cases of a preset, most telling first, each with the implementations it runs.

    target: issue 2's target shapes (two Qwen3-4B heads and one head, H=2560, N=16384: fwd+bwd, scoring,
    forward); sweep-fwdbwd: H in {1024, 2048, 2560, 4096} x N in {4096, 8192, 16384} x {2, 1} heads;
    sweep-score: the same grid, one head, scoring; sweep: both sweeps. CPU: tiny shapes, fp32."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    common = dict(vocab=args.vocab or (CPU_VOCAB if args.cpu else QWEN3_VOCAB),
                  dtype=args.dtype or ("fp32" if args.cpu else "bf16"), lam=args.lam, ignore_frac=args.ignore_frac)
    (h, n), hidden, tokens = ((32, 64), (16, 32), (32, 64)) if args.cpu else ((2560, 16384), QWEN3_HIDDEN, TOKENS)
    target = [
        (Case(n=n, hs=h, hw=h, mode="fwdbwd", **common), ALL),  # two Qwen3-4B heads: the training step
        (Case(n=n, hs=h, hw=0, mode="fwdbwd", **common), ONE_HEAD_SWEEP),  # one head: against cut-cross-entropy
        (Case(n=n, hs=h, hw=0, mode="score", **common), ("ours_triton", "ours_torch", "eager", "compile_chunked")),
        (Case(n=n, hs=h, hw=0, mode="fwd", **common), ("ours_triton", "eager", "liger", "cce")),
    ]
    if args.cpu:
        target = [(c, names if "ours_torch" in names else ("ours_torch", *names)) for c, names in target]
    if preset == "target":
        return target
    plan = []
    if preset in ("sweep-fwdbwd", "sweep"):
        plan += [(c, TWO_HEAD_SWEEP if c.hw else ONE_HEAD_SWEEP)
                 for c in _grid(hidden, tokens, (2, 1), ("fwdbwd",), **common)]
    if preset in ("sweep-score", "sweep"):
        plan += [(c, SCORE_SWEEP) for c in _grid(hidden, tokens, (1,), ("score",), **common)]
    done = {c for c, _ in target}
    plan = [(c, names) for c, names in plan if c not in done]
    if args.cpu:  # on the CPU the torch impl is our real path (Triton runs in its interpreter)
        plan = [(c, names if "ours_torch" in names else ("ours_torch", *names)) for c, names in plan]
    return plan


def custom_plan(args) -> Plan:
    """--hidden/--tokens grid: ours and the eager baseline unless --impls/--baselines say otherwise."""
    vocab = args.vocab or (CPU_VOCAB if args.cpu else QWEN3_VOCAB)
    dtype = args.dtype or ("fp32" if args.cpu else "bf16")
    cases = _grid(args.hidden, args.tokens, args.heads, args.modes, vocab, dtype, args.lam, args.ignore_frac)
    names = ("ours_torch", "ours_triton", "eager") if args.cpu else ("ours_triton", "eager")
    return [(c, names) for c in cases]


def resolve_names(plan: Plan, ours: list[str] | None, baselines: list[str] | None) -> Plan:
    """Apply --impls / --baselines (each replaces its half of every case's list; 'all' / 'none' allowed)."""
    if baselines == ["all"]:
        baselines = list(BASELINES)
    elif baselines == ["none"]:
        baselines = []
    out = []
    for case, names in plan:
        mine = [x for x in names if x.startswith("ours_")] if ours is None else [f"ours_{x}" for x in ours]
        theirs = [x for x in names if not x.startswith("ours_")] if baselines is None else list(baselines)
        out.append((case, tuple(mine + theirs)))
    return out


def load_done(paths) -> tuple[set[tuple[str, str]], dict[tuple, float]]:
    """From earlier results files: the (case label, impl) pairs with a final status, and the GEMM rates
    measured on the same kind of device, keyed like Runner.gemm."""
    from bench.common import read_jsonl

    done, gemm = set(), {}
    for p in paths:
        for r in read_jsonl(p):
            if r.get("status") in FINAL_STATUSES:
                done.add((r["case"], r["impl"]))
            if r.get("mode") == "gemm" and r.get("status") == "ok":
                gemm[(r["device_name"], r["n"], r["hs"] + r["hw"], r["vocab"], r["dtype"])] = r["tflops"]
    return done, gemm


# --------------------------------------------------------------------------------------------------------
# Running one case


class Runner:
    def __init__(self, args, device: torch.device, env: dict, writer: ResultsWriter, impls: list[Impl]):
        self.args, self.device, self.env, self.writer, self.impls = args, device, env, writer, impls
        self.rid = run_id(env)
        self.timing = TimingConfig(warmup=args.warmup, reps=args.reps, min_reps=min(args.min_reps, args.reps),
                                   rep_budget_s=args.rep_budget_s, flush_l2=device.type == "cuda")
        self.flusher = L2Flusher(device) if device.type == "cuda" else None
        self.checker = Checker(device, args.check_n, args.seed)
        self.gemm: dict[tuple, float | None] = {}
        self.start = time.monotonic()
        self.unavailable = {impl.name: impl.unavailable(device) for impl in impls}
        self.wrong = []

    def out_of_time(self) -> bool:
        return self.args.time_budget is not None and time.monotonic() - self.start > self.args.time_budget

    def base_row(self, case: Case, impl: str, kind: str) -> dict:
        return {**{k: self.env.get(k) for k in ENV_COLUMNS}, "run_id": self.rid, "label": self.args.label,
                "case": case.label(), "mode": case.mode, "heads": case.heads, "n": case.n, "vocab": case.vocab,
                "hs": case.hs, "hw": case.hw, "dtype": case.dtype, "lam": case.lam, "ignore_frac": case.ignore_frac,
                "impl": impl, "kind": kind}

    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.start:7.1f}s] {msg}", flush=True)

    # --- the roofline: one GEMM of the logits shape [N, Hs+Hw] x [Hs+Hw, V] ---------------------------
    def gemm_row(self, case: Case) -> dict | None:
        key = (case.n, case.sum_hidden, case.vocab, case.dtype)
        if key in self.gemm:
            return None
        name = "cublas_gemm" if self.device.type == "cuda" else "torch_mm"
        row = self.base_row(case, name, "roofline")
        row.update(mode="gemm", case=f"gemm N={case.n} K={case.sum_hidden} V={case.vocab} {case.dtype}", exact=True,
                   note="torch.mm(A [N,K], B[V,K].T) into a preallocated [N,V] output, random data")
        flops = gemm_flops(case.n, case.sum_hidden, case.vocab)
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed + 3)
        try:
            a = torch.randn(case.n, case.sum_hidden, device=self.device, dtype=case.torch_dtype, generator=gen)
            b = torch.randn(case.vocab, case.sum_hidden, device=self.device, dtype=case.torch_dtype, generator=gen)
            c = torch.empty(case.n, case.vocab, device=self.device, dtype=case.torch_dtype)

            def refill():
                a.normal_(generator=gen)
                b.normal_(generator=gen)

            t = time_fn(lambda: torch.mm(a, b.T, out=c), self.device, self.timing, refill, self.flusher)
            tflops = flops / (t.ms_median * 1e-3) / 1e12
            row.update(status="ok", reps=t.reps, ms_median=t.ms_median, ms_p20=t.ms_p20, ms_p80=t.ms_p80,
                       first_call_s=t.first_call_s, flops=flops, tflops=tflops, gemm_tflops=tflops, pct_gemm=100.0)
            self.gemm[key] = tflops
        except Exception as e:  # noqa: BLE001 - recorded, the benchmark goes on
            self.gemm[key] = None
            row.update(status="OOM" if is_oom(e) else "error", note=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            a = b = c = None  # noqa: F841
            free_device_memory(self.device)
        self.log(f"{row['case']}: {row['status']} {row.get('tflops') or 0:.1f} TFLOP/s")
        return row

    # --- one implementation on one case ---------------------------------------------------------------
    def check_row(self, case: Case, impl: Impl, reference: LazyReference) -> dict:
        """The row up to the timing: availability, then the correctness check (status None = go on and time)."""
        row = self.base_row(case, impl.name, impl.kind)
        row.update(exact=impl.exact, note=impl.note, flops=case.flops, status=None)
        reason = self.unavailable[impl.name] or impl.unsupported(case)
        if reason:
            row.update(status=reason.split(":")[0], note=reason)
            return row
        if self.out_of_time():
            row.update(status="skipped", note="time budget used up")
            return row
        try:
            chk = self.checker.check(impl, case, reference)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                row.update(status="error", note=f"correctness check failed to run: {type(e).__name__}: {str(e)[:300]}")
                self.log(f"{case.label()} {impl.name}: check error\n{traceback.format_exc()}")
                return row
            chk = {"check_ok": False}
            row["note"] = f"{impl.note}; the correctness check ran out of memory"
            e = None  # noqa: F841
        finally:
            free_device_memory(self.device)
        row.update(chk)
        if not chk.get("check_ok") and impl.kind == "ours":
            row.update(status="wrong", note="failed the correctness check: not timed, not recorded as a result")
            self.wrong.append(f"{case.label()} {impl.name}")
            self.log(f"{case.label()} {impl.name}: WRONG {chk}")
        elif not chk.get("check_ok"):
            row["note"] = f"{row['note']}; correctness check FAILED (see check_err_*)"
        return row

    def _time(self, case: Case, impl: Impl, row: dict) -> dict:
        inp = step = None
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed + 11)
        cuda = self.device.type == "cuda"
        base = 0  # allocated before the implementation's first call (the inputs and what the run keeps)
        try:
            inp = make_inputs(case, self.device, self.args.seed, requires_grad=case.mode == "fwdbwd")
            if cuda:
                torch.cuda.synchronize(self.device)
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            step = impl.step(case, inp)
            t = time_fn(step, self.device, self.timing, lambda: refresh_inputs(inp, gen), self.flusher)
            mem = measure_memory(step, inp.nbytes(), self.device)
            tflops = case.flops / (t.ms_median * 1e-3) / 1e12
            gemm = self.gemm.get((case.n, case.sum_hidden, case.vocab, case.dtype))
            row.update(status="ok", reps=t.reps, ms_median=t.ms_median, ms_p20=t.ms_p20, ms_p80=t.ms_p80,
                       first_call_s=t.first_call_s, tflops=tflops, gemm_tflops=gemm,
                       pct_gemm=100.0 * tflops / gemm if gemm else None)
            if mem is not None:
                row.update(mem_inputs_bytes=mem.inputs_bytes, mem_outputs_bytes=mem.outputs_bytes,
                           mem_extra_bytes=mem.extra_bytes, mem_peak_bytes=mem.peak_bytes)
        except Exception as e:  # noqa: BLE001 - an OOM or a crash of one implementation is a result, not the end
            if is_oom(e):
                # A lower bound of what the call needed, on the same footing as mem_peak_bytes: the inputs, plus
                # what the call had allocated at its peak, plus the allocation that failed.
                tried = oom_tried_bytes(e)
                growth = torch.cuda.max_memory_allocated(self.device) - base if cuda else 0
                inputs = inp.nbytes() if inp is not None else 0
                needed = inputs + growth + tried if tried is not None else None
                row.update(status="OOM", mem_inputs_bytes=inputs or None, mem_needed_bytes_min=needed,
                           note=f"out of memory; needed more than {needed / GIB:.1f} GiB (inputs + peak growth + "
                                f"the failed allocation); {impl.note}" if needed else f"out of memory; {impl.note}")
            else:
                row.update(status="error", note=f"{type(e).__name__}: {str(e)[:300]}")
                self.log(f"{case.label()} {impl.name}: error\n{traceback.format_exc()}")
            e = None  # noqa: F841 - drop the traceback's frames (and the tensors they hold)
        finally:
            inp = step = None
            free_device_memory(self.device)
        return row

    def run_case(self, case: Case, names=None, done=frozenset()) -> list[dict]:
        """Rows of one case: the GEMM roofline (once per shape), then each implementation named (all if None)
        that `done` does not already hold."""
        impls = [i for i in self.impls if (names is None or i.name in names) and (case.label(), i.name) not in done]
        rows = []
        if not impls:
            return rows
        gemm = self.gemm_row(case)
        if gemm is not None:
            rows.append(gemm)
        # Check everything first, then drop the reference (full-V float64 tensors) before anything is timed.
        reference = LazyReference(self.checker, case)
        pending = [(impl, self.check_row(case, impl, reference)) for impl in impls]
        reference.value = None
        free_device_memory(self.device)
        for impl, row in pending:
            if row["status"] is None and self.out_of_time():
                row.update(status="skipped", note="time budget used up")
            elif row["status"] is None:
                row = self._time(case, impl, row)
            rows.append(row)
            self.log(f"{case.label()} {impl.name}: {row['status']}"
                     + (f" {row['ms_median']:.2f} ms, {row['tflops']:.1f} TFLOP/s" if row.get("ms_median") else "")
                     + (f", extra {row['mem_extra_bytes'] / GIB:.2f} GiB" if row.get("mem_extra_bytes") is not None
                        else ""))
        add_speedups(rows)
        return rows


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_<baseline> = baseline median / ours median, on our rows, for baselines measured in this case."""
    base = {r["impl"]: r["ms_median"] for r in rows if r.get("kind") == "baseline" and r.get("status") == "ok"}
    for r in rows:
        if r.get("kind") == "ours" and r.get("status") == "ok":
            for name, ms in base.items():
                r[f"speedup_vs_{name}"] = ms / r["ms_median"]


# --------------------------------------------------------------------------------------------------------
# CLI


def _csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _csv_names(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Modes: fwd (loss, no grad), fwdbwd (loss + all gradients), score (no grad, "
                                        "per-row entropy + NLL). Baselines: " + ", ".join(BASELINES) + ".")
    ap.add_argument("--cpu", action="store_true",
                    help="small CPU mode: tiny V/H/N, fp32, torch impl + Triton interpreter, runs anywhere in seconds")
    ap.add_argument("--preset", choices=PRESETS,
                    help="predefined case list (default: target, unless --hidden/--tokens are given)")
    ap.add_argument("--hidden", type=_csv_ints, help="hidden sizes, e.g. 1024,2560 (replaces the preset)")
    ap.add_argument("--tokens", type=_csv_ints, help="token counts N, e.g. 4096,16384 (replaces the preset)")
    ap.add_argument("--heads", type=_csv_ints, default=[2, 1], help="1 and/or 2 (with --hidden/--tokens)")
    ap.add_argument("--modes", type=_csv_names, default=list(MODES), help="fwd,fwdbwd,score (with --hidden/--tokens)")
    ap.add_argument("--vocab", type=int, help=f"vocabulary size (default {QWEN3_VOCAB}; {CPU_VOCAB} with --cpu)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="input dtype (default bf16; fp32 with --cpu)")
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--ignore-frac", type=float, default=0.0, help="fraction of ignored (-100) labels when timing")
    ap.add_argument("--impls", type=_csv_names,
                    help=f"our impls for every case, from {','.join(OURS)} (default: chosen per case by the preset)")
    ap.add_argument("--baselines", type=_csv_names,
                    help="baselines for every case, or 'all' / 'none' (default: chosen per case by the preset); "
                         "ones not installed are reported as 'missing'")
    ap.add_argument("--compile-chunks", type=int, default=8, help="token chunks of the torch.compile baselines")
    ap.add_argument("--warmup", type=int, help="warm-up calls (default 2 on CUDA, 1 on the CPU)")
    ap.add_argument("--reps", type=int, help="at most this many timed repetitions (default 10 on CUDA, 5 on the CPU)")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--rep-budget-s", type=float, help="target seconds of timed reps per implementation")
    ap.add_argument("--check-n", type=int, default=512, help="rows of the correctness check")
    ap.add_argument("--time-budget", type=float, help="seconds; cases started after this are recorded as skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-kernel", help="output directory (results.csv / results.jsonl)")
    ap.add_argument("--label", help="free-text label stored in every row (default: GPU or 'CPU smoke ...')")
    ap.add_argument("--threads", type=int,
                    help="torch CPU threads (default 1 with --cpu: tiny ops on a shared machine are dominated by "
                         "thread contention otherwise)")
    ap.add_argument("--skip-done", nargs="+", metavar="RESULTS_JSONL",
                    help="earlier results files: (case, impl) pairs with a final status there are not run again")
    ap.add_argument("--no-table", action="store_true", help="do not print the summary table at the end")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.reps = args.reps if args.reps is not None else (10 if cuda else 5)
    args.rep_budget_s = args.rep_budget_s if args.rep_budget_s is not None else (10.0 if cuda else 2.0)
    if args.label is None:
        args.label = "GPU" if cuda else "CPU smoke (tiny shapes, fp32; not a GPU result)"
    bad_modes = set(args.modes) - set(MODES)
    if bad_modes:
        ap.error(f"--modes: unknown {sorted(bad_modes)}; choose from {MODES}")
    if set(args.heads) - {1, 2}:
        ap.error("--heads takes 1 and/or 2")
    if not torch.cuda.is_available() and not args.cpu:
        ap.error("no CUDA device here: pass --cpu for the small CPU mode")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
    if args.threads or args.cpu:
        torch.set_num_threads(args.threads or 1)
    if args.hidden or args.tokens:
        if not (args.hidden and args.tokens):
            raise SystemExit("--hidden and --tokens go together")
        plan = custom_plan(args)
    else:
        plan = preset_plan(args.preset or "target", args)
    plan = resolve_names(plan, args.impls, args.baselines)
    wanted = {n for _, names in plan for n in names}
    impls = build_impls([n[5:] for n in ALL if n in wanted and n.startswith("ours_")],
                        [n for n in BASELINES if n in wanted], args.compile_chunks)
    unknown = wanted - {i.name for i in impls}
    if unknown:
        raise SystemExit(f"unknown implementations {sorted(unknown)}")

    env = env_info(device)
    writer = ResultsWriter(args.out, COLUMNS)
    runner = Runner(args, device, env, writer, impls)
    done, gemm = load_done(args.skip_done) if args.skip_done else (set(), {})
    for (dev_name, *key), tflops in gemm.items():
        if dev_name == env["device_name"]:
            runner.gemm[tuple(key)] = tflops
    runner.log(f"{len(plan)} cases on {env['device_name']} ({env['device_type']}), commit "
               f"{(env['git_commit'] or 'unknown')[:12]}{' (dirty)' if env['git_dirty'] else ''}; "
               f"impls: {', '.join(i.name for i in impls)}; writing {writer.csv_path}"
               + (f"; {len(done)} (case, impl) pairs already done" if done else ""))
    for name, why in runner.unavailable.items():
        if why:
            runner.log(f"{name}: {why}")
    skipped = 0
    for case, names in plan:
        if runner.out_of_time():
            if any((case.label(), n) not in done for n in names):
                row = runner.base_row(case, "all", "none")
                row.update(status="skipped", note="time budget used up before this case started")
                writer.append([row])
                skipped += 1
            continue
        rows = runner.run_case(case, names, done)
        if rows:
            writer.append(rows)
    if skipped:
        runner.log(f"{skipped} cases skipped (time budget {args.time_budget:.0f} s)")
    if not args.no_table and writer.jsonl_path.exists():
        from bench.plot import format_table, load_rows

        print(format_table(load_rows([writer.jsonl_path])))
    if runner.wrong:
        print("REFUSED (failed the correctness check): " + "; ".join(runner.wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
