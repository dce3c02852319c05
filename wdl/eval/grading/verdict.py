"""The verdict on one generation, shared by every grader."""

from __future__ import annotations

import threading
from dataclasses import dataclass

GRADERS = ("reference", "lenient", "external")


@dataclass(frozen=True)
class Grade:
    """One generation's verdict.

    `extracted`: the answer read from the output (None: none found, or the grader does not say);
    `method`: how the verdict was reached (per grader: choice, choice_value, math_verify, number, external,
    none, error); `error`: why the grader failed (`correct` is then False)."""

    extracted: str | None
    correct: bool
    method: str
    error: str | None = None


def alarm_timeout(seconds: int) -> int | None:
    """`seconds` where a SIGALRM timeout can work (math-verify's and the external grader's), else None:
    signals reach only the main thread."""
    return seconds if threading.current_thread() is threading.main_thread() else None
