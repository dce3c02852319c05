"""An external grader (`eval.grader: external`): a Python file pinned by its SHA-256, e.g. the `ttrl_math`
scorer of THUNLP/OPD that the reference's OPD protocol grades with.

The file must define `grade_answer_verl(response, answer)` (truthy when correct) or
`compute_score(response, answer)` (a bool, or a mapping whose "acc" is truthy when correct); it is imported as
a package from its own folder, so its relative imports of companion files work. The file runs only after its
SHA-256 matches the pinned one: importing a file executes it. Each call is bounded by a SIGALRM timeout
(main thread only); an exception or a timeout makes that generation wrong and records the error.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

from wdl.eval.grading.verdict import Grade, alarm_timeout
from wdl.eval.provenance import sha256_file


class GraderTimeout(Exception):
    pass


@contextmanager
def _alarm(seconds: int | None):
    if seconds is None:
        yield
        return

    def on_alarm(signum, frame):
        raise GraderTimeout(f"no verdict within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _entry_point(module, path: Path) -> Callable[[str, str], bool]:
    if hasattr(module, "grade_answer_verl"):
        return lambda response, answer: bool(module.grade_answer_verl(response, answer))
    if hasattr(module, "compute_score"):
        def score(response: str, answer: str) -> bool:
            result = module.compute_score(response, answer)
            return bool(result.get("acc")) if isinstance(result, Mapping) else bool(result)

        return score
    raise ValueError(f"eval.grader_path: {path} defines neither grade_answer_verl(response, answer) nor "
                     "compute_score(response, answer); point grader_path at the scorer module itself")


class ExternalGrader:
    """A verified, loaded external grader; `grade(output, gold)` -> Grade(method "external")."""

    def __init__(self, path: str | Path, sha256: str, *, timeout_seconds: int = 20):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise ValueError(f"eval.grader_path: {self.path} does not exist")
        self.sha256 = sha256_file(self.path)
        if self.sha256 != sha256.lower():
            raise ValueError(f"eval.grader_path: {self.path} has SHA-256 {self.sha256}, the pinned one is "
                             f"{sha256.lower()}; use the pinned file, or pin this one with "
                             f"eval.grader_sha256: {self.sha256}")
        self.timeout_seconds = timeout_seconds
        name = f"wdl_external_grader_{self.sha256[:12]}"
        spec = importlib.util.spec_from_file_location(name, self.path,
                                                      submodule_search_locations=[str(self.path.parent)])
        if spec is None or spec.loader is None:
            raise ValueError(f"eval.grader_path: {self.path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: the file's relative imports look their package up there
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ValueError(f"eval.grader_path: importing {self.path} failed: {type(e).__name__}: {e}") from None
        self._score = _entry_point(module, self.path)

    def grade(self, output: str, gold: str) -> Grade:
        try:
            with _alarm(alarm_timeout(self.timeout_seconds)):
                correct = self._score(output, gold)
        except Exception as e:  # a grader bug or a timeout: this generation is wrong, the run goes on
            return Grade(None, False, "external", f"{type(e).__name__}: {e}")
        return Grade(None, correct, "external")

    def provenance(self) -> dict:
        """The file, its SHA-256, and those of the Python files beside it (its companions)."""
        companions = {p.name: sha256_file(p) for p in sorted(self.path.parent.glob("*.py")) if p != self.path}
        return {"name": "external", "path": str(self.path), "sha256": self.sha256, "companions": companions}
