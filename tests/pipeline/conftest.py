"""Fixtures of the pipeline tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pipeline_helpers import run_wdl


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted run of the shortened pipeline, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("wmss") / "run"
    proc = run_wdl(out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc
