"""The shared harness of the loss benchmarks: one case, several implementations -> result rows.

For a case it measures, in this order and in one process: the GEMM rate at the logits shape [N, Hs+Hw] x
[Hs+Hw, V] (the roofline row, once per shape), each implementation's correctness check (bench/correctness.py;
ours is never timed when it fails), its time (bench/timing.py), its extra memory (bench/memory.py), and for
implementations whose GEMMs are all torch ops the FLOPs they really issue (bench/flop_count.py). Speed-ups of
ours over each baseline come from rows of the same call. An OOM or a crash of one implementation is a row,
not the end of the run. The harness knows nothing of time budgets or sessions: a caller that has one passes
`stop`, a predicate asked before each implementation starts.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable

import torch
import wdl_kernels

from bench.cases import LossCase, LossInputs, gemm_flops, make_inputs, refresh_inputs
from bench.correctness import CHECK_COLUMNS, Checker
from bench.env import ENV_COLUMNS, GIB, run_id
from bench.impls import BASELINES, Impl, describe
from bench.memory import free_device_memory, is_oom, measure_memory, oom_tried_bytes
from bench.timing import L2Flusher, TimingConfig, time_fn, time_interleaved

CASE_COLUMNS = ("run_id", "label", "stage", "case", "task", "heads", "n", "vocab", "hs", "hw", "dtype", "lam",
                "ignore_frac")
IMPL_COLUMNS = ("impl", "kind", "kernel_mode", "impl_config", "exact", "rated", "status", "note", "gemm_paths")
TIMING_COLUMNS = ("reps", "ms_median", "ms_p20", "ms_p80", "first_call_s", "flops", "tflops", "gemm_tflops",
                  "pct_gemm", "flops_counted", "flops_counted_ratio")
SPEEDUP_COLUMNS = tuple(f"speedup_vs_{b}" for b in BASELINES)
MEMORY_COLUMNS = ("mem_inputs_bytes", "mem_outputs_bytes", "mem_extra_bytes", "mem_peak_bytes",
                  "mem_needed_bytes_min")
COLUMNS = (ENV_COLUMNS + CASE_COLUMNS + IMPL_COLUMNS + TIMING_COLUMNS + SPEEDUP_COLUMNS + MEMORY_COLUMNS
           + CHECK_COLUMNS)
FINAL_STATUSES = ("ok", "OOM", "missing", "unsupported", "wrong", "error")


class Harness:
    def __init__(self, device: torch.device, env: dict, timing: TimingConfig, check_n: int = 512, seed: int = 0,
                 label: str = "", interleave: bool = False, log: Callable[[str], None] | None = None):
        self.device, self.env, self.timing, self.seed, self.label = device, env, timing, seed, label
        self.interleave = interleave
        self.rid = run_id(env)
        self.flusher = L2Flusher(device) if device.type == "cuda" and timing.flush_l2 else None
        self.checker = Checker(device, check_n, seed)
        self.gemm: dict[tuple, float | None] = {}
        self._unavailable: dict[str, str | None] = {}
        self._gemm_paths: dict[str, str] = {}
        self.wrong: list[str] = []
        self._log = log or (lambda msg: print(msg, flush=True))
        self._t0 = time.monotonic()

    def log(self, msg: str) -> None:
        self._log(f"[bench {time.monotonic() - self._t0:7.1f}s] {msg}")

    def unavailable(self, impl: Impl) -> str | None:
        if impl.name not in self._unavailable:
            self._unavailable[impl.name] = impl.unavailable(self.device)
        return self._unavailable[impl.name]

    def gemm_paths(self, case: LossCase) -> str:
        if case.dtype not in self._gemm_paths:
            paths = wdl_kernels.gemm_paths(self.device, case.torch_dtype)
            self._gemm_paths[case.dtype] = json.dumps(paths, sort_keys=True)
        return self._gemm_paths[case.dtype]

    def base_row(self, case: LossCase, impl: str, kind: str, stage: str) -> dict:
        return {**{k: self.env.get(k) for k in ENV_COLUMNS}, "run_id": self.rid, "label": self.label, "stage": stage,
                "case": case.label(), "task": case.task, "heads": case.heads, "n": case.n, "vocab": case.vocab,
                "hs": case.hs, "hw": case.hw, "dtype": case.dtype, "lam": case.lam, "ignore_frac": case.ignore_frac,
                "impl": impl, "kind": kind, "gemm_paths": self.gemm_paths(case)}

    # --- the roofline: one GEMM of the logits shape [N, Hs+Hw] x [Hs+Hw, V] ---------------------------
    def gemm_row(self, case: LossCase, stage: str = "") -> dict | None:
        """The GEMM rate at the case's logits shape, measured once per shape (None when already measured)."""
        key = (case.n, case.sum_hidden, case.vocab, case.dtype)
        if key in self.gemm:
            return None
        name = "cublas_gemm" if self.device.type == "cuda" else "torch_mm"
        row = self.base_row(case, name, "roofline", stage)
        row.update(task="gemm", case=f"gemm N={case.n} K={case.sum_hidden} V={case.vocab} {case.dtype}", exact=True,
                   rated=True, note="torch.mm(A [N,K], B[V,K].T) into a preallocated [N,V] output, random data")
        flops = gemm_flops(case.n, case.sum_hidden, case.vocab)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 3)
        a = b = c = None
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
    def check_row(self, case: LossCase, impl: Impl, stage: str) -> dict:
        """The row up to the timing: availability, then the correctness check (status None = go on and time)."""
        row = self.base_row(case, impl.name, impl.kind, stage)
        row.update(exact=impl.exact, rated=impl.rated, kernel_mode=impl.kernel_mode, impl_config=describe(impl),
                   note=impl.note, flops=case.flops, status=None)
        reason = self.unavailable(impl) or impl.unsupported(case)
        if reason:
            row.update(status=reason.split(":")[0], note=reason)
            return row
        try:
            chk = self.checker.check(impl, case)
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

    def _finish(self, case: LossCase, impl: Impl, row: dict, inp: LossInputs, t) -> None:
        step = impl.step(case, inp)
        mem = measure_memory(step, inp.nbytes(), self.device)
        tflops = case.flops / (t.ms_median * 1e-3) / 1e12
        gemm = self.gemm.get((case.n, case.sum_hidden, case.vocab, case.dtype))
        row.update(status="ok", reps=t.reps, ms_median=t.ms_median, ms_p20=t.ms_p20, ms_p80=t.ms_p80,
                   first_call_s=t.first_call_s, tflops=tflops, gemm_tflops=gemm,
                   pct_gemm=100.0 * tflops / gemm if gemm else None)
        if mem is not None:
            row.update(mem_inputs_bytes=mem.inputs_bytes, mem_outputs_bytes=mem.outputs_bytes,
                       mem_extra_bytes=mem.extra_bytes, mem_peak_bytes=mem.peak_bytes)
        counted = impl.count_flops(case, inp)
        if counted is not None:
            row.update(flops_counted=counted, flops_counted_ratio=counted / case.flops)

    def _failed(self, impl: Impl, row: dict, e: BaseException, inp: LossInputs | None, base: int) -> None:
        if is_oom(e):
            # A lower bound of what the call needed, on the same footing as mem_peak_bytes: the inputs, plus what
            # the call had allocated at its peak, plus the allocation that failed.
            tried = oom_tried_bytes(e)
            cuda = self.device.type == "cuda"
            growth = torch.cuda.max_memory_allocated(self.device) - base if cuda else 0
            inputs = inp.nbytes() if inp is not None else 0
            needed = inputs + growth + tried if tried is not None else None
            row.update(status="OOM", mem_inputs_bytes=inputs or None, mem_needed_bytes_min=needed,
                       note=f"out of memory; needed more than {needed / GIB:.1f} GiB (inputs + peak growth + "
                            f"the failed allocation); {impl.note}" if needed else f"out of memory; {impl.note}")
        else:
            row.update(status="error", note=f"{type(e).__name__}: {str(e)[:300]}")
            self.log(f"{row['case']} {impl.name}: error\n{traceback.format_exc()}")

    def _time_one(self, case: LossCase, impl: Impl, row: dict, inp: LossInputs, gen) -> None:
        base = 0
        try:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            t = time_fn(impl.step(case, inp), self.device, self.timing, lambda: refresh_inputs(inp, gen), self.flusher)
            self._finish(case, impl, row, inp, t)
        except Exception as e:  # noqa: BLE001 - an OOM or a crash of one implementation is a result
            self._failed(impl, row, e, inp, base)
            e = None  # noqa: F841 - drop the traceback's frames (and the tensors they hold)
        finally:
            free_device_memory(self.device)

    def _time_all(self, case: LossCase, pending: list[tuple[Impl, dict]], stop) -> None:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 11)
        inp = None
        try:
            inp = make_inputs(case, self.device, self.seed, requires_grad=case.task == "fwdbwd")
        except Exception as e:  # noqa: BLE001
            for impl, row in pending:
                self._failed(impl, row, e, None, 0)
            return
        try:
            if self.interleave and len(pending) > 1 and not (stop and stop()):
                try:
                    steps = [impl.step(case, inp) for impl, _ in pending]
                    timings = time_interleaved(steps, self.device, self.timing, lambda: refresh_inputs(inp, gen),
                                               self.flusher)
                    for (impl, row), t in zip(pending, timings):
                        self._finish(case, impl, row, inp, t)
                    return
                except Exception:  # noqa: BLE001 - time them one by one, which records each failure
                    free_device_memory(self.device)
            for impl, row in pending:
                if stop and stop():
                    row.update(status="skipped", note="not started: the caller's time budget ran out")
                    continue
                self._time_one(case, impl, row, inp, gen)
        finally:
            inp = None
            free_device_memory(self.device)

    def run_case(self, case: LossCase, impls: list[Impl], stage: str = "",
                 stop: Callable[[], bool] | None = None) -> list[dict]:
        """Rows of one case: the GEMM roofline (once per shape), then each implementation (checked, timed)."""
        rows = []
        gemm = self.gemm_row(case, stage)
        if gemm is not None:
            rows.append(gemm)
        pending = []
        for impl in impls:
            if stop and stop():
                row = self.base_row(case, impl.name, impl.kind, stage)
                row.update(status="skipped", note="not started: the caller's time budget ran out", rated=impl.rated,
                           kernel_mode=impl.kernel_mode)
                rows.append(row)
                continue
            row = self.check_row(case, impl, stage)
            rows.append(row)
            if row["status"] is None:
                pending.append((impl, row))
        # The references ([n, V] float64) are dropped before anything is timed.
        self.checker.release()
        free_device_memory(self.device)
        self._time_all(case, pending, stop)
        for row in rows:
            if row.get("task") == "gemm":
                continue
            self.log(f"{case.label()} {row['impl']}: {row['status']}"
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
