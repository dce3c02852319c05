"""Progress of the long loops (scoring, tokenization, evaluation): a tqdm bar on a terminal, plain lines with the
rate and the ETA elsewhere (a log file, a cluster job's output), where a bar would be one endless line.

    with Progress("scoring base", total=len(ds), unit="samples") as bar:
        for mb in batches:
            ...
            bar.update(n)

Log mode prints a line at the first update, then at most one every `interval` seconds (default 30; the
environment variable WDL_PROGRESS_INTERVAL sets it, 0 prints every update), and a last one with the total time
(nothing at all when nothing was counted, e.g. a map that datasets answered from its cache):

    scoring base: 1200/5000 samples (24%), 35.2 samples/s, elapsed 00:34, ETA 01:48
    scoring base: 5000 samples in 02:22 (35.1 samples/s)

`enabled=False` (ranks other than 0) makes every call a no-op. `bar=False` keeps log mode's lines but draws no
bar on a terminal, for loops whose library draws its own (datasets' map). A Progress pickles (the lines of a
datasets worker process come from its own copy).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO

from tqdm.auto import tqdm

DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("WDL_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def is_terminal(stream: IO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        *,
        enabled: bool = True,
        bar: bool = True,
        interval: float | None = None,
        stream: IO | None = None,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled
        self.interval = _interval() if interval is None else interval
        self.n = 0
        self.t0 = self._last = time.perf_counter()
        self._stream = stream
        self._bar = None
        self._lines = False
        if not enabled:
            return
        if is_terminal(sys.stderr) and stream is None:
            if bar:
                self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        else:
            self._lines = True

    # a Progress crosses into datasets' worker processes: the bar (a terminal handle) stays behind
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bar"], state["_stream"] = None, None
        return state

    def _print(self, text: str) -> None:
        print(text, file=self._stream or sys.stdout, flush=True)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.n / elapsed if elapsed > 0 and self.n else None
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if rate and self.total:
            parts.append(f"ETA {tqdm.format_interval(max(self.total - self.n, 0) / rate)}")
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = time.perf_counter()
            first = self.n == n
            if (first or now - self._last >= self.interval) and (self.total is None or self.n < self.total):
                self._last = now
                self._print(self._line())

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self.n:
            elapsed = time.perf_counter() - self.t0
            rate = f" ({self.n / elapsed:.3g} {self.unit}/s)" if elapsed > 0 and self.n else ""
            self._print(f"{self.desc}: {self.n} {self.unit} in {tqdm.format_interval(elapsed)}{rate}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
