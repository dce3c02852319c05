#!/usr/bin/env python
"""The one GPU call that judges every kernel target, run from the repository root on the GPU machine:

    python3 scripts/gpu_call.py                  # on the GPU machine (device tool: carry [".whl", ".gpu"])
    python3 scripts/gpu_call.py --dry-run        # the same code path on a CPU: torch backend, tiny shapes

Stages, in priority order, each under a guard: a stage starts only if the time it needs is left in the budget
(default 480 s of wall time for the whole call), stops starting new work at its own deadline, and one that does
not fit is skipped and says so. A watchdog ends the call at the budget whatever runs, after writing what was
measured. Everything goes to $OUT (at most 8 files); the last lines printed are the stage table, the key
measurements and the target verdicts (bench/targets.py: PASS / FAIL from measured CUDA rows only).

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
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "scripts")]

import torch  # noqa: E402

if not torch.cuda.is_available():  # the Triton interpreter, chosen before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.breakdown import fp16_probe, kernel_families, phase_split  # noqa: E402
from bench.cases import LossCase  # noqa: E402
from bench.env import GIB, env_info, gpu_clocks  # noqa: E402
from bench.harness import COLUMNS, Harness  # noqa: E402
from bench.impls import Ours, build_impls  # noqa: E402
from bench.plot import format_table, load_rows, write_summary  # noqa: E402
from bench.targets import format_verdicts  # noqa: E402
from bench.timing import TimingConfig  # noqa: E402
from bench.writer import ResultsWriter  # noqa: E402
from gpu_prepare import select_wheels  # noqa: E402
from wdl.io import atomic_write_json, read_jsonl  # noqa: E402

PREVIOUS = ROOT / ".gpu" / "previous"
RESERVE_S = 15.0  # kept for the summary at the end
FILES = ("results.jsonl", "call.json", "summary.md", "call.log", "pytest_gpu.log", "pytest_gpu.xml")  # under $OUT


@dataclass(frozen=True)
class Shapes:
    """The shapes of one call: the real ones on the GPU, tiny stand-ins for the CPU rehearsal."""

    vocab: int
    hidden: int
    n_small: int
    n_mid: int
    n_large: int
    chunks: tuple[int, ...]
    dtype: str
    check_n: int
    compile_chunk: int
    reference_chunk: int
    engine: str  # the backend "ours" runs on


GPU = Shapes(vocab=151936, hidden=2560, n_small=4096, n_mid=8192, n_large=16384,
             chunks=(1024, 2048, 4096, 8192, 16384), dtype="bf16", check_n=2048, compile_chunk=2048,
             reference_chunk=1024, engine="triton")
DRY = Shapes(vocab=500, hidden=32, n_small=64, n_mid=96, n_large=128, chunks=(16, 32, 64, 128), dtype="bf16",
             check_n=32, compile_chunk=32, reference_chunk=48, engine="torch")


@dataclass(frozen=True)
class Stage:
    name: str
    run: object  # (call, deadline) -> None
    need_s: float  # time it needs to start (on the GPU; scaled down for the rehearsal)
    cap_s: float  # its own limit


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


def stage_setup(call: Call, deadline: float) -> None:
    wheels, problems = select_wheels(Path(call.args.wheels))
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(call.site), *map(str, wheels)]
        subprocess.run(cmd, check=True, timeout=max(10.0, deadline - time.monotonic()))
        sys.path.insert(0, str(call.site))
    for p in problems:
        print("setup:", p)
    if call.dry:
        torch.set_num_threads(1)  # tiny shapes on a shared CPU: more threads only contend
    env = env_info(call.device)
    import wdl_kernels

    call.info.update(run_id=None, started_utc=env["date_utc"], env=env, wheels=[w.name for w in wheels],
                     wheel_problems=problems, clocks_at_start=gpu_clocks(),
                     gemm_paths=wdl_kernels.gemm_paths(call.device, torch.bfloat16),
                     matmul_flags={"allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                                   "allow_bf16_reduced_precision_reduction":
                                       torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction},
                     wdl_kernels_file=wdl_kernels.__file__, shapes=call.shapes.__dict__)
    if call.device.type == "cuda":
        props = torch.cuda.get_device_properties(call.device)
        call.info["device"] = {"name": props.name, "sm_count": props.multi_processor_count,
                               "l2_bytes": getattr(props, "L2_cache_size", None),
                               "memory_gib": round(props.total_memory / GIB, 1),
                               "capability": [props.major, props.minor]}
    timing = (TimingConfig(warmup=1, reps=2, min_reps=1, rep_budget_s=0.5, flush_l2=False) if call.dry else
              TimingConfig(warmup=2, reps=10, min_reps=5, rep_budget_s=2.5))
    label = "CPU rehearsal (dry run: torch backend, tiny shapes; not a GPU result)" if call.dry else "GPU call"
    call.harness = Harness(call.device, env, timing, check_n=call.shapes.check_n, seed=0, label=label)
    call.info["run_id"] = call.harness.rid
    call.timing = timing
    print(f"device {env['device_name']} ({env['device_type']}), commit {(env['git_commit'] or 'unknown')[:12]}"
          f"{' (dirty)' if env['git_dirty'] else ''} from {env['source']}; torch {env['torch_version']}, triton "
          f"{env['triton_version']}, liger-kernel {env['liger_kernel_version']}, cut-cross-entropy "
          f"{env['cut_cross_entropy_version']}; clocks {call.info['clocks_at_start']}")
    print(f"gemm paths: {call.info['gemm_paths']}")


def stage_correctness(call: Call, deadline: float) -> None:
    log, xml = call.out / "pytest_gpu.log", call.out / "pytest_gpu.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"), str(call.site),
                                                       os.environ.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pytest", call.args.tests, "-q", "-rfE", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    workers = call.args.test_workers if importlib.util.find_spec("xdist") is not None else 0
    if workers > 1:  # the tests' float64 references run on the CPU: spread them over its cores
        cmd += ["-n", str(workers)]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or workers) // workers))
    timeout = max(5.0, deadline - time.monotonic())
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text = log.read_text()
    summary = next((line.strip("= ") for line in reversed(text.splitlines()) if " in " in line and
                    any(w in line for w in ("passed", "failed", "skipped", "error"))), "no summary")
    print("\n".join(text.splitlines()[-15:]))
    st = call.info["stages"]["correctness"]
    if rc is None:
        st.update(status="failed", note=f"stopped at its limit ({timeout:.0f} s); {summary}")
    elif rc not in (0, 5):
        st.update(status="failed", note=summary)
    else:
        st.update(note=summary)


def stage_breakdown(call: Call, deadline: float) -> None:
    s, n = call.shapes, call.shapes.n_large
    fast, lean = call.ours("fast"), call.ours("lean")
    cases = [(call.case(n), [fast, lean]), (call.case(n, ignore_frac=0.1), [fast, lean]),
             (call.case(n, task="score"), [lean]), (call.case(n, hw=0, task="score"), [lean])]
    call.run_cases("breakdown", cases, deadline)
    for mode in ("fast", "lean"):
        if time.monotonic() > deadline:
            call.info["stages"]["breakdown"]["partial"] = True
            break
        call.info[f"breakdown:phases:{mode}"] = phase_split(call.case(n), s.engine, mode, call.device, call.timing)


def stage_kernels(call: Call, deadline: float) -> None:
    for mode in ("fast", "lean"):
        if time.monotonic() > deadline:
            call.info["stages"]["kernels"]["partial"] = True
            break
        call.info[f"kernels:{mode}"] = kernel_families(call.case(call.shapes.n_large), call.shapes.engine, mode,
                                                       call.device)


def stage_fp16(call: Call, deadline: float) -> None:
    case = call.case(call.shapes.n_large, dtype="fp16", ignore_frac=0.1)
    call.info["fp16-probe:errors"] = fp16_probe(case, call.shapes.engine, ("fast", "lean"), call.device,
                                                call.shapes.reference_chunk)


def _two_head_impls(call: Call):
    return [call.ours("fast"), call.ours("lean"),
            *build_impls(["compile_chunked", "compile_chunked_gif"], call.shapes.compile_chunk,
                         use_compile=not call.dry),
            *build_impls(["liger_fp32acc", "liger"])]


def stage_two_head(call: Call, deadline: float) -> None:
    impls = _two_head_impls(call)
    call.run_cases("two-head", [(call.case(n), impls) for n in (call.shapes.n_small, call.shapes.n_large)], deadline)


def stage_two_head_mid(call: Call, deadline: float) -> None:
    call.run_cases("two-head-8192", [(call.case(call.shapes.n_mid), _two_head_impls(call))], deadline)


def stage_one_head(call: Call, deadline: float) -> None:
    impls = [call.ours("lean"), call.ours("fast"), *build_impls(["cce_nofilter", "cce"])]
    call.run_cases("one-head", [(call.case(call.shapes.n_large, hw=0), impls)], deadline)


def stage_chunk_sweep(call: Call, deadline: float) -> None:
    from wdl_kernels import register_backend

    if call.shapes.engine == "triton":
        from wdl_kernels.triton_backend import TritonBackend

        base = TritonBackend.for_device(call.device)
    else:
        from wdl_kernels.torch_backend import TorchBackend

        base = TorchBackend()
    impls = [call.ours("fast")]
    for c in call.shapes.chunks:
        name = f"bench-fast-chunk-{c}"
        register_backend(name, replace(base, token_chunk=c))
        impls.append(Ours(name, "fast", label=f"token_chunk={c}"))
    call.info["chunk-sweep:default_token_chunk"] = base.fast_token_chunk(
        _problem_stub(call.case(call.shapes.n_large)))
    call.run_cases("chunk-sweep", [(call.case(call.shapes.n_large), impls)], deadline)


def _problem_stub(case: LossCase):
    """A Problem with the case's shapes (meta tensors): enough for the backends' chunk rules."""
    from wdl_kernels.options import LossOptions
    from wdl_kernels.problem import Problem

    def t(*shape):
        return torch.empty(*shape, dtype=case.torch_dtype, device="meta")

    return Problem(t(case.n, case.hs), t(case.vocab, case.hs), t(case.n, case.hw), t(case.vocab, case.hw),
                   torch.empty(case.n, dtype=torch.long, device="meta"), None, LossOptions())


STAGES = [
    Stage("setup", stage_setup, 0, 60),
    Stage("correctness", stage_correctness, 60, 150),
    Stage("breakdown", stage_breakdown, 40, 75),
    Stage("kernels", stage_kernels, 10, 25),
    Stage("fp16-probe", stage_fp16, 15, 40),
    Stage("two-head", stage_two_head, 60, 150),
    Stage("one-head", stage_one_head, 25, 60),
    Stage("chunk-sweep", stage_chunk_sweep, 20, 40),
    Stage("two-head-8192", stage_two_head_mid, 40, 60),
]


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
