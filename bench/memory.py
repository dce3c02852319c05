"""Peak device memory of one call, and out-of-memory handling: an OOM is a result, never a crash.

`measure_memory` reads the CUDA caching allocator's counters around one call: `extra_bytes` is the peak
beyond the inputs (resident before the call) and the outputs it returned (e.g. the gradients), i.e. the call's
own workspace. The CPU has no such counters: there it returns None, and nothing is estimated.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


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
    inputs_bytes: int  # what the caller passed in (resident before the call)
    outputs_bytes: int  # what the call returned, all alive at its end
    extra_bytes: int  # the peak beyond inputs and outputs: the call's own workspace
    peak_bytes: int  # inputs + the peak growth during the call


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
