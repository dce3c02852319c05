"""What each stage of the one GPU call measures (scripts/gpu_call.py runs them under its time guards).

A stage is a function (call, deadline) -> None: it records rows through `call.run_cases` (the shared harness)
and other measurements in `call.info` (call.json), and stops starting new work at `deadline`. The shapes are
the real ones on the GPU and tiny stand-ins for the CPU rehearsal (--dry-run).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import wdl_kernels
from wdl_kernels import register_backend
from wdl_kernels.options import LossOptions
from wdl_kernels.problem import Problem
from wdl_kernels.torch_backend import TorchBackend

from bench.breakdown import fp16_probe, kernel_families, phase_split
from bench.cases import LossCase
from bench.env import GIB, env_info, gpu_clocks
from bench.harness import Harness
from bench.impls import Ours, build_impls
from bench.timing import TimingConfig
from gpu_prepare import select_wheels

ROOT = Path(__file__).resolve().parents[1]


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


# Each stage takes the running call (scripts/gpu_call.py: Call) and the monotonic time it must stop at.


def stage_setup(call, deadline: float) -> None:
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


def stage_correctness(call, deadline: float) -> None:
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


def stage_breakdown(call, deadline: float) -> None:
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


def stage_kernels(call, deadline: float) -> None:
    for mode in ("fast", "lean"):
        if time.monotonic() > deadline:
            call.info["stages"]["kernels"]["partial"] = True
            break
        call.info[f"kernels:{mode}"] = kernel_families(call.case(call.shapes.n_large), call.shapes.engine, mode,
                                                       call.device)


def stage_fp16(call, deadline: float) -> None:
    case = call.case(call.shapes.n_large, dtype="fp16", ignore_frac=0.1)
    call.info["fp16-probe:errors"] = fp16_probe(case, call.shapes.engine, ("fast", "lean"), call.device,
                                                call.shapes.reference_chunk)


def _two_head_impls(call):
    return [call.ours("fast"), call.ours("lean"),
            *build_impls(["compile_chunked", "compile_chunked_gif"], call.shapes.compile_chunk,
                         use_compile=not call.dry),
            *build_impls(["liger_fp32acc", "liger"])]


def stage_two_head(call, deadline: float) -> None:
    impls = _two_head_impls(call)
    call.run_cases("two-head", [(call.case(n), impls) for n in (call.shapes.n_small, call.shapes.n_large)], deadline)


def stage_two_head_mid(call, deadline: float) -> None:
    call.run_cases("two-head-8192", [(call.case(call.shapes.n_mid), _two_head_impls(call))], deadline)


def stage_one_head(call, deadline: float) -> None:
    impls = [call.ours("lean"), call.ours("fast"), *build_impls(["cce_nofilter", "cce"])]
    call.run_cases("one-head", [(call.case(call.shapes.n_large, hw=0), impls)], deadline)


def stage_chunk_sweep(call, deadline: float) -> None:
    if call.shapes.engine == "triton":
        from wdl_kernels.triton_backend import TritonBackend  # imports triton: only where ours runs on it

        base = TritonBackend.for_device(call.device)
    else:
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
