"""Timing of benchmark calls: CUDA events on a GPU, perf_counter on the CPU, medians with p20/p80.

On CUDA: warm-up calls first (compilation, autotuning and handle creation stay out of the numbers; the first
one's wall time is kept as `first_call_s`), an L2 flush before each repetition, fresh random inputs through a
caller-supplied `before_each` hook (never zeros), CUDA events around each call, the median over repetitions.
`time_interleaved` times several functions in alternating rounds, so a machine whose load drifts (a shared
CPU) shifts all of them alike instead of biasing their ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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


class _Clock:
    """One timed call: CUDA events (read after a synchronize) or perf_counter."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(self, fn: Callable[[], Any]) -> None:
        if self.cuda:
            self.start.record()
            out = fn()
            self.end.record()
        else:
            t = time.perf_counter()
            out = fn()
            self.ms = (time.perf_counter() - t) * 1000.0
        del out

    def elapsed_ms(self) -> float:
        return self.start.elapsed_time(self.end) if self.cuda else self.ms


def time_interleaved(fns: Sequence[Callable[[], Any]], device: torch.device, cfg: TimingConfig,
                     before_each: Callable[[], None] | None = None, flusher: L2Flusher | None = None
                     ) -> list[Timing]:
    """A Timing per function; the repetitions run in rounds (fn0, fn1, ..., fn0, fn1, ...).

    `before_each` (e.g. refilling the inputs with fresh random values) and the L2 flush run before each start,
    untimed. The output of each call is dropped before the next one starts.
    """
    cuda = device.type == "cuda"
    if cuda and cfg.flush_l2 and flusher is None:
        flusher = L2Flusher(device)
    first, est = [], []
    for fn in fns:
        t0 = time.perf_counter()
        for i in range(max(cfg.warmup, 1)):
            if before_each is not None:
                before_each()
            clock = _Clock(cuda)
            clock.run(fn)
            if cuda:
                torch.cuda.synchronize(device)
            if i == 0:
                first.append(time.perf_counter() - t0)
        est.append(clock.elapsed_ms())
    n = min(cfg.reps_for(e) for e in est)
    clocks = [[_Clock(cuda) for _ in range(n)] for _ in fns]
    for r in range(n):
        for j, fn in enumerate(fns):
            if before_each is not None:
                before_each()
            if cuda and cfg.flush_l2:
                flusher()
            clocks[j][r].run(fn)
    if cuda:
        torch.cuda.synchronize(device)
    return [Timing.from_samples([c.elapsed_ms() for c in cs], f) for cs, f in zip(clocks, first)]


def time_fn(fn: Callable[[], Any], device: torch.device, cfg: TimingConfig,
            before_each: Callable[[], None] | None = None, flusher: L2Flusher | None = None) -> Timing:
    """Median / p20 / p80 of `fn()` over repetitions (see time_interleaved, with one function)."""
    return time_interleaved([fn], device, cfg, before_each, flusher)[0]
