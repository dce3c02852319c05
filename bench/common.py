"""Shared benchmark plumbing: environment record, timing, peak memory, and the results writer.

Used by the kernel benchmark (bench/bench_kernel.py) and the end-to-end training benchmark. Nothing here
knows about the kernel; a benchmark supplies its own columns and FLOP counts.

Timing follows the device method (see bench/README.md): on CUDA, CUDA events around each repetition, a
warm-up first (compilation, autotuning and handle creation stay out of the numbers), an L2 flush before each
repetition, fresh random inputs through a caller-supplied `before_each` hook (never zeros), and the median with
the 20th/80th percentiles over the repetitions. On the CPU, `time.perf_counter` medians.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Written by scripts/gpu_prepare.py beside the checkout copy that travels to the GPU machine, which has no git.
SOURCE_STAMP = REPO_ROOT / ".gpu" / "source.json"

try:
    from wdl.io import atomic_write_text
except ImportError:  # run as a script from another directory: the checkout root is not on sys.path yet
    sys.path.insert(0, str(REPO_ROOT))
    from wdl.io import atomic_write_text

GIB = float(1 << 30)

# --------------------------------------------------------------------------------------------------------
# Environment


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str | None:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_state(repo: Path = REPO_ROOT) -> dict:
    """{"git_commit", "git_dirty", "source"}: from git where it works, else from the travelling stamp file.

    `git_dirty` counts tracked files only (untracked scratch files do not make a result suspect).
    """
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
        return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "source": "git"}
    stamp = Path(os.environ.get("WDL_SOURCE_STAMP", SOURCE_STAMP))
    if stamp.is_file():
        data = json.loads(stamp.read_text())
        # The stamp's date shows in every row, so a stale one (prepare not re-run) can be spotted.
        return {"git_commit": data.get("git_commit"), "git_dirty": data.get("git_dirty"),
                "source": f"stamp {data.get('prepared_utc', 'undated')}"}
    return {"git_commit": None, "git_dirty": None, "source": "unknown"}


def _driver_version() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def env_info(device: torch.device | str | None = None) -> dict:
    """Where and with what a result was measured. No hostname, no user names.

    Keys: date_utc, git_commit, git_dirty, source, device_type, device_name, device_count, sm_count,
    device_memory_gib, cuda_version, driver_version, torch_version, triton_version, transformers_version,
    wdl_kernels_version, liger_kernel_version, cut_cross_entropy_version, python_version, platform, cpu_count,
    torch_threads.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    info.update(source_state())
    info["device_type"] = dev.type
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(
            device_name=props.name,
            device_count=torch.cuda.device_count(),
            sm_count=props.multi_processor_count,
            device_memory_gib=round(props.total_memory / GIB, 2),
            cuda_version=torch.version.cuda,
            driver_version=_driver_version(),
        )
    else:
        info.update(device_name=(platform.processor() or platform.machine() or "cpu"), device_count=0, sm_count=None,
                    device_memory_gib=None, cuda_version=torch.version.cuda, driver_version=None)
    info.update(
        torch_version=torch.__version__,
        triton_version=_version("triton"),
        transformers_version=_version("transformers"),
        wdl_kernels_version=_version("wdl-kernels") or _module_version("wdl_kernels"),
        liger_kernel_version=_version("liger-kernel") or _version("liger_kernel"),
        cut_cross_entropy_version=_version("cut-cross-entropy") or _version("cut_cross_entropy"),
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
    )
    return info


def _module_version(name: str) -> str | None:
    mod = sys.modules.get(name)
    return getattr(mod, "__version__", None) if mod is not None else None


ENV_COLUMNS = (
    "date_utc", "git_commit", "git_dirty", "source", "device_type", "device_name", "device_count", "sm_count",
    "device_memory_gib", "cuda_version", "driver_version", "torch_version", "triton_version",
    "transformers_version", "wdl_kernels_version", "liger_kernel_version", "cut_cross_entropy_version",
    "python_version", "platform", "cpu_count", "torch_threads",
)

# --------------------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Timing:
    ms_median: float
    ms_p20: float
    ms_p80: float
    reps: int
    first_call_s: float  # wall time of the first warm-up call (compilation / autotuning show up here)

    @staticmethod
    def from_samples(samples_ms: Sequence[float], first_call_s: float) -> "Timing":
        if not samples_ms:
            raise ValueError("no timing samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        return Timing(float(np.median(a)), float(np.percentile(a, 20)), float(np.percentile(a, 80)), len(a),
                      first_call_s)


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 2  # calls before timing; the first one also gives `first_call_s`
    reps: int = 10  # at most this many timed repetitions ...
    min_reps: int = 3  # ... and at least this many,
    rep_budget_s: float = 10.0  # fitting (after the warm-up estimate) into about this much time
    flush_l2: bool = True

    def __post_init__(self):
        if self.warmup < 0 or self.reps < 1 or self.min_reps < 1 or self.min_reps > self.reps:
            raise ValueError(f"need warmup >= 0 and 1 <= min_reps <= reps, got {self}")
        if self.rep_budget_s <= 0:
            raise ValueError(f"rep_budget_s must be positive, got {self.rep_budget_s}")

    def reps_for(self, est_ms: float) -> int:
        fit = int(self.rep_budget_s * 1000.0 / max(est_ms, 1e-3))
        return max(self.min_reps, min(self.reps, fit))


class L2Flusher:
    """Overwrites a buffer twice the size of the L2 cache (at least 256 MiB) before each timed repetition."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or (50 << 20)
        self.buf = torch.empty(max(2 * l2, 256 << 20) // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def time_cuda(fn: Callable[[], Any], cfg: TimingConfig, before_each: Callable[[], None] | None = None,
              flusher: L2Flusher | None = None) -> Timing:
    """Median / p20 / p80 of `fn()` over repetitions, timed with CUDA events on the current stream.

    `before_each` (e.g. refilling the inputs with fresh random values) and the L2 flush run before each start
    event, so they are not timed. The output of each call is dropped before the next one starts.
    """
    t0 = time.perf_counter()
    est_ms = None
    for i in range(max(cfg.warmup, 1)):
        if before_each is not None:
            before_each()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        del out
        if i == 0:
            first_call_s = time.perf_counter() - t0
        est_ms = start.elapsed_time(end)
    if cfg.flush_l2 and flusher is None:
        flusher = L2Flusher(torch.device("cuda", torch.cuda.current_device()))
    n = cfg.reps_for(est_ms)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        if before_each is not None:
            before_each()
        if cfg.flush_l2:
            flusher()
        start.record()
        out = fn()
        end.record()
        del out
    torch.cuda.synchronize()
    return Timing.from_samples([s.elapsed_time(e) for s, e in events], first_call_s)


def time_cpu(fn: Callable[[], Any], cfg: TimingConfig, before_each: Callable[[], None] | None = None) -> Timing:
    """Median / p20 / p80 of `fn()` wall time (time.perf_counter) on the CPU."""
    samples = []
    first_call_s, est_ms = 0.0, None
    for i in range(max(cfg.warmup, 1)):
        if before_each is not None:
            before_each()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        del out
        if i == 0:
            first_call_s = dt
        est_ms = dt * 1000.0
    for _ in range(cfg.reps_for(est_ms)):
        if before_each is not None:
            before_each()
        t = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t) * 1000.0)
        del out
    return Timing.from_samples(samples, first_call_s)


def time_fn(fn: Callable[[], Any], device: torch.device, cfg: TimingConfig,
            before_each: Callable[[], None] | None = None, flusher: L2Flusher | None = None) -> Timing:
    if device.type == "cuda":
        return time_cuda(fn, cfg, before_each, flusher)
    return time_cpu(fn, cfg, before_each)


# --------------------------------------------------------------------------------------------------------
# Memory


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in obj (tensor, or nested tuple/list/dict/NamedTuple of them); shared storage once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def visit(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                visit(v)

    visit(obj)
    return total


@dataclass(frozen=True)
class MemoryUse:
    """Peak memory of one call, from the CUDA caching allocator's counters.

    inputs_bytes: what the caller passed in (resident before the call).
    outputs_bytes: what the call returned (e.g. the gradients), all alive at its end.
    extra_bytes: the peak beyond inputs and outputs, i.e. the call's own workspace.
    peak_bytes: inputs + the peak growth during the call: the absolute peak if only the inputs were resident.
    """

    inputs_bytes: int
    outputs_bytes: int
    extra_bytes: int
    peak_bytes: int


def measure_memory(fn: Callable[[], Any], inputs_bytes: int, device: torch.device) -> MemoryUse | None:
    """Run fn once and report its peak memory; None where the device has no allocator counters (CPU)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    growth = torch.cuda.max_memory_allocated(device) - base
    out_bytes = tensor_bytes(out)
    del out
    return MemoryUse(inputs_bytes=inputs_bytes, outputs_bytes=out_bytes, extra_bytes=max(0, growth - out_bytes),
                     peak_bytes=inputs_bytes + growth)


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom_type) or "out of memory" in str(exc).lower()


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def oom_tried_bytes(exc: BaseException) -> int | None:
    """The allocation that failed, from PyTorch's message ("Tried to allocate 9.27 GiB")."""
    m = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", str(exc))
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def free_device_memory(device: torch.device) -> None:
    """Return cached CUDA blocks after a case (and after an OOM, whose traceback frames held tensors)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------
# Results files


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if abs(v) < 1e15 else repr(v)
    return str(v)


class ResultsWriter:
    """Appends rows of one fixed schema to `<dir>/<stem>.csv` and `<dir>/<stem>.jsonl`.

    Each append rewrites each file through a temporary file and a rename, so a reader (or a run killed
    mid-write) sees the previous complete file or the new one. An existing file whose header differs from
    the schema is an error (start a new file instead of mixing schemas).
    """

    def __init__(self, out_dir: str | os.PathLike, columns: Sequence[str], stem: str = "results"):
        if len(set(columns)) != len(columns):
            raise ValueError(f"duplicate column names in {columns}")
        self.columns = tuple(columns)
        self.dir = Path(out_dir)
        self.csv_path = self.dir / f"{stem}.csv"
        self.jsonl_path = self.dir / f"{stem}.jsonl"
        if self.csv_path.exists():
            header = self.csv_path.read_text().splitlines()[:1]
            if header and next(csv.reader(header)) != list(self.columns):
                raise ValueError(f"{self.csv_path} was written with another schema; pass a new output directory")

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        for r in rows:
            unknown = set(r) - set(self.columns)
            if unknown:
                raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        full = [{c: r.get(c) for c in self.columns} for r in rows]
        old_jsonl = self.jsonl_path.read_text() if self.jsonl_path.exists() else ""
        atomic_write_text(self.jsonl_path, old_jsonl + "".join(json.dumps(r) + "\n" for r in full))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not self.csv_path.exists():
            w.writerow(self.columns)
        for r in full:
            w.writerow([_csv_cell(r[c]) for c in self.columns])
        old_csv = self.csv_path.read_text() if self.csv_path.exists() else ""
        atomic_write_text(self.csv_path, old_csv + buf.getvalue())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from None
    return rows


def run_id(env: dict) -> str:
    """Short id of one benchmark process: UTC date-time, commit prefix, device slug."""
    stamp = env["date_utc"].replace("-", "").replace(":", "")
    commit = (env.get("git_commit") or "nogit")[:8]
    return f"{stamp}_{commit}_{device_slug(env)}"


def device_slug(env: dict) -> str:
    name = env.get("device_name") or env.get("device_type") or "unknown"
    if env.get("device_type") == "cpu":
        name = "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "unknown"
