#!/usr/bin/env python
"""The one GPU call that judges every kernel target, run from the repository root on the GPU machine:

    python3 scripts/gpu_call.py                  # on the GPU machine (device tool: carry [".whl", ".gpu"])
    python3 scripts/gpu_call.py --dry-run        # the same code path on a CPU: torch backend, tiny shapes

Stages, in priority order, each under a guard: a stage starts only if the time it needs is left in the budget
(default 480 s of wall time for the whole call), stops starting new work at its own deadline, and one that does
not fit is skipped and says so. A watchdog ends the call at the budget whatever runs, after writing what was
measured. Everything goes to $OUT (at most 8 files); the last lines printed are the stage table, the key
measurements and the target verdicts (bench/targets.py: PASS / FAIL from measured CUDA rows only). This file
is the session policy (budget, guards, watchdog, resuming, outputs); scripts/gpu_stages.py is what each
stage measures.

    setup         install the carried liger-kernel and cut-cross-entropy wheels (.whl/) into a target directory;
                  record versions, device, SM clocks, wdl_kernels.gemm_paths()
    correctness   pytest tests/kernels/test_gpu.py: compiled bf16/fp16/fp32 of both modes against float64 at
                  V=151936 (one and two heads, ragged N/V, extreme logits, all ignored, determinism, memory)
    breakdown     cuBLAS rate at [16384, 5120] x [5120, 151936]; each mode's fwd+bwd as % of it on 6NVH, with
                  and without 10% ignored labels (extra memory of each); scoring on 2NVH; forward/backward split
    kernels       device time per kernel family of one profiled fwd+bwd of each mode
    fp16-probe    fp16 errors of both modes at N=16384 against float64 (chunked reference)
    two-head      N in {4096, 16384}, Hs=Hw=2560: both modes vs torch.compile chunked (two styles) and Liger
                  (fp32 accumulation and default)
    one-head      N=16384, H=2560: both modes vs cut-cross-entropy exact (filter_eps=None); filtered as information
    chunk-sweep   fast mode's token chunk in {1024, ..., 16384} (time and extra memory), for the default
    two-head-8192 N=8192, the two-head comparison (last: the targets at 8192 are judged only if it fits)

Resuming: if `.gpu/previous/` (--previous) holds what an earlier call returned (scripts/gpu_prepare.py --done
FILES_AT), the stages it completed are not run again; their rows are carried into this call's files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "scripts")]

import torch  # noqa: E402

if not torch.cuda.is_available():  # the Triton interpreter, chosen before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.cases import LossCase  # noqa: E402
from bench.env import gpu_clocks  # noqa: E402
from bench.harness import COLUMNS, Harness  # noqa: E402
from bench.impls import Ours  # noqa: E402
from bench.plot import format_table, load_rows, write_summary  # noqa: E402
from bench.targets import format_verdicts  # noqa: E402
from bench.timing import TimingConfig  # noqa: E402
from bench.writer import ResultsWriter  # noqa: E402
from gpu_stages import DRY, GPU, STAGES, Stage  # noqa: E402
from wdl.io import atomic_write_json, read_jsonl  # noqa: E402

PREVIOUS = ROOT / ".gpu" / "previous"
RESERVE_S = 15.0  # kept for the summary at the end
FILES = ("results.jsonl", "call.json", "summary.md", "call.log", "pytest_gpu.log", "pytest_gpu.xml")  # under $OUT


class Tee:
    """Writes to the terminal and to a log file (call.log)."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, s):
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()
        self.file.flush()


class Call:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.t0 = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shapes = DRY if self.dry else GPU
        self.device = torch.device("cpu") if self.dry else torch.device("cuda", 0)
        self.site = Path(tempfile.mkdtemp(prefix="wdl-site-"))
        self.info: dict = {"budget_s": args.budget, "dry_run": self.dry, "stages": {}, "started_utc": None}
        self.writer = ResultsWriter(self.out, COLUMNS, with_csv=False)
        self.current = "setup"
        self.harness: Harness | None = None
        self.timing: TimingConfig | None = None
        self.previous = self._previous() if args.previous else None
        self.lock = threading.Lock()
        self.finished = False

    # --- time ---------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.args.budget - self.elapsed() - RESERVE_S

    def say(self, msg: str) -> None:
        print(f"=== [{self.elapsed():5.0f}s] {msg}", flush=True)

    # --- resume -------------------------------------------------------------------------------------
    def _previous(self) -> dict | None:
        folder = Path(self.args.previous)
        if not (folder / "call.json").is_file():
            return None
        prev = json.loads((folder / "call.json").read_text())
        done = [s for s, v in prev.get("stages", {}).items() if v.get("status") in ("ok", "done earlier")]
        return {"info": prev, "done": done, "rows": read_jsonl(folder / "results.jsonl")}

    def carried(self, stage: str) -> bool:
        """True (and this stage's rows and notes copied over) when an earlier call completed it."""
        if self.previous is None or stage not in self.previous["done"]:
            return False
        rows = [r for r in self.previous["rows"] if r.get("stage") == stage]
        if rows:
            self.writer.append(rows)
        for key, value in self.previous["info"].items():
            if key.startswith(f"{stage}:"):
                self.info[key] = value
        old = self.previous["info"]["stages"][stage]
        self.info["stages"][stage] = {"status": "done earlier", "seconds": 0.0,
                                      "note": f"carried from {self.previous['info'].get('run_id')} "
                                              f"({old.get('seconds', 0):.0f} s there)"}
        return True

    # --- outputs ------------------------------------------------------------------------------------
    def case(self, n: int, hw: int | None = None, task: str = "fwdbwd", **kw) -> LossCase:
        s = self.shapes
        return LossCase(n=n, vocab=s.vocab, hs=s.hidden, hw=s.hidden if hw is None else hw, task=task,
                        dtype=kw.pop("dtype", s.dtype), **kw)

    def ours(self, mode: str) -> Ours:
        return Ours(self.shapes.engine, mode)

    def run_cases(self, stage: str, cases, deadline: float) -> None:
        stop = lambda: time.monotonic() > deadline  # noqa: E731
        for case, impls in cases:
            if stop():
                self.say(f"{stage}: deadline reached, {case.label()} not started")
                self.info["stages"][stage]["partial"] = True
                continue
            rows = self.harness.run_case(case, impls, stage=stage, stop=stop)
            if any(r.get("status") == "skipped" for r in rows):
                self.info["stages"][stage]["partial"] = True
            self.writer.append(rows)

    def write_info(self) -> None:
        if self.harness is not None:
            try:
                from wdl_kernels.triton_backend import occupancy_report

                self.info["occupancy"] = occupancy_report()
            except Exception as e:  # noqa: BLE001 - triton absent (a CPU without it)
                self.info["occupancy"] = f"unavailable: {type(e).__name__}"
        self.info["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write_json(self.out / "call.json", self.info)

    def finish(self, reason: str | None = None) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        if reason:
            self.info["ended"] = reason
        self.info["clocks_at_end"] = gpu_clocks()
        self.write_info()
        rows = load_rows([self.writer.jsonl_path]) if self.writer.jsonl_path.exists() else []
        write_summary(rows, self.out / "summary.md", "gpu")
        extras = self.extras()
        with open(self.out / "summary.md", "a") as f:
            f.write("\n## Stages\n\n" + self.stage_table(markdown=True) + "\n\n## Breakdown\n\n"
                    + "\n".join(f"- {line}" for line in extras) + "\n")
        print("\n" + self.stage_table())
        print("\n".join(extras))
        key = [r for r in rows if r.get("stage") in ("breakdown", "two-head", "one-head", "two-head-8192")]
        if key:
            print("\n" + format_table(key))
        print("\n" + format_verdicts(rows, "gpu"), flush=True)

    def extras(self) -> list[str]:
        """One line per breakdown measurement kept in call.json (phases, kernel families, fp16 errors)."""
        out = []
        for mode in ("fast", "lean"):
            p = self.info.get(f"breakdown:phases:{mode}")
            if p:
                out.append(f"{mode}: forward {p['forward_ms']:.2f} ms, backward {p['backward_ms']:.2f} ms "
                           f"(medians of {p['reps']})")
            k = self.info.get(f"kernels:{mode}")
            if k:
                fams = ", ".join(f"{name} {ms:.2f}" for name, ms in k["families"].items())
                out.append(f"{mode} device ms by kernel family ({k['device_total_ms']:.2f} in all): {fams}")
        probe = self.info.get("fp16-probe:errors")
        for mode in ("fast", "lean"):
            if probe and mode in probe:
                e = probe[mode]
                grads = {k: v for k, v in e.items() if k.startswith("d_")}
                out.append(f"fp16 {mode} ({probe['case']}): loss err {e['loss']:.1e}, worst gradient err "
                           f"{max(grads.values()):.1e}, unlabeled dW rows {e['d_weight_unlabeled_rows']:.1e}, "
                           f"finite {e['finite']}")
        if "chunk-sweep:default_token_chunk" in self.info:
            out.append(f"fast mode's default token chunk at the sweep's shape: "
                       f"{self.info['chunk-sweep:default_token_chunk']}")
        return out

    def stage_table(self, markdown: bool = False) -> str:
        lines = [(name, v.get("status", "?") + (" (partial)" if v.get("partial") else ""),
                  f"{v.get('seconds', 0):.0f}", v.get("note", "")) for name, v in self.info["stages"].items()]
        if markdown:
            return "\n".join(["| stage | status | s | note |", "|---|---|---|---|"]
                             + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in lines])
        return "\n".join(f"{a:<14} {b:<18} {c:>5}s  {d}" for a, b, c, d in lines)

    # --- the stages ---------------------------------------------------------------------------------
    def run(self, stages: list[Stage]) -> int:
        for stage in stages:
            self.current = stage.name
            if stage.name != "setup" and self.carried(stage.name):
                self.say(f"{stage.name}: done in the previous call, rows carried over")
                continue
            need = stage.need_s / (20.0 if self.dry else 1.0)
            left = self.remaining()
            if stage.name != "setup" and left < need:
                note = f"skipped: needs {need:.0f} s, {max(left, 0):.0f} s left in the budget"
                self.info["stages"][stage.name] = {"status": "skipped", "seconds": 0.0, "note": note}
                self.say(f"{stage.name}: {note}")
                continue
            cap = stage.cap_s / (4.0 if self.dry else 1.0)
            deadline = time.monotonic() + min(cap, max(left, 0.0))
            self.say(f"{stage.name} (up to {min(cap, max(left, 0.0)):.0f} s; {left:.0f} s left)")
            self.info["stages"][stage.name] = {"status": "running", "seconds": 0.0, "note": ""}
            t = time.monotonic()
            try:
                stage.run(self, deadline)
                status = self.info["stages"][stage.name].get("status")
                if status == "running":
                    self.info["stages"][stage.name]["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - one stage's failure is recorded, the call goes on
                traceback.print_exc()
                self.info["stages"][stage.name].update(status="error", note=f"{type(e).__name__}: {str(e)[:300]}")
            self.info["stages"][stage.name]["seconds"] = round(time.monotonic() - t, 1)
            self.write_info()
            if stage.name == "setup" and self.info["stages"]["setup"]["status"] != "ok":
                self.say("setup failed: nothing else runs")
                break
        self.finish()
        failed = [s for s, v in self.info["stages"].items() if v["status"] in ("error", "failed")]
        wrong = self.harness.wrong if self.harness else []
        return 1 if failed or wrong else 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU rehearsal: same stages, torch backend, tiny shapes")
    ap.add_argument("--budget", type=float, default=480.0, help="wall seconds for the whole call (default 480)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output directory (default: $OUT)")
    ap.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of the carried wheels")
    ap.add_argument("--tests", default="tests/kernels/test_gpu.py", help="the GPU tests of the correctness stage")
    ap.add_argument("--test-workers", type=int,
                    help="pytest-xdist workers of the correctness stage where xdist is installed (default 4; 0 with "
                         "--dry-run)")
    ap.add_argument("--stages", help=f"comma list, a subset of {','.join(s.name for s in STAGES)} (setup always)")
    ap.add_argument("--previous", default=str(PREVIOUS),
                    help="what an earlier call returned (scripts/gpu_prepare.py --done puts it in .gpu/previous/): "
                         "its completed stages are carried over, not run again; '' to ignore it")
    args = ap.parse_args(argv)
    if not args.out:
        if not args.dry_run:
            ap.error("$OUT is not set (the device tool sets it): pass --out DIR")
        args.out = tempfile.mkdtemp(prefix="wdl-gpu-dry-run-")
    if args.test_workers is None:
        args.test_workers = 0 if args.dry_run else 4
    if args.budget <= 0:
        ap.error(f"--budget must be positive seconds, got {args.budget}")
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device here: run the CPU rehearsal with --dry-run")
    if args.stages:
        known = {s.name for s in STAGES}
        bad = set(args.stages.split(",")) - known
        if bad:
            ap.error(f"--stages: unknown {sorted(bad)}; choose from {', '.join(sorted(known))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    call = Call(args)
    sys.stdout = Tee(sys.stdout, call.out / "call.log")
    sys.stderr = Tee(sys.stderr, call.out / "call.log")
    chosen = [s for s in STAGES if s.name == "setup" or not args.stages or s.name in args.stages.split(",")]
    call.say(f"one GPU call: budget {args.budget:.0f} s, stages {', '.join(s.name for s in chosen)}, out {call.out}"
             + (f"; resuming ({', '.join(call.previous['done'])} done before)" if call.previous else ""))

    def watchdog():
        call.say(f"BUDGET EXHAUSTED during stage {call.current}: writing what was measured and ending the call")
        st = call.info["stages"].get(call.current)
        if st is not None:
            st.update(status="cut", note=f"the call's {args.budget:.0f} s budget ran out during it")
        call.finish(reason=f"watchdog: budget ran out during {call.current}")
        os._exit(124)

    timer = threading.Timer(max(1.0, args.budget - call.elapsed() - 3.0), watchdog)
    timer.daemon = True
    timer.start()
    try:
        return call.run(chosen)
    finally:
        timer.cancel()
        shutil.rmtree(call.site, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
