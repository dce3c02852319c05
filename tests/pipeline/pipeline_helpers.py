"""Helpers of the pipeline tests: a shortened tiny pipeline (the embedded default's phases, fewer samples and
steps, a smaller model) run as `python -m wdl run` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every phase of the embedded default, sized for CI: one small layer, a few dozen samples, a few steps each.
SHORT = [
    "synthetic.n_train=40",
    "synthetic.n_eval=8",
    "synthetic.n_pretrain=40",
    "model.tiny.vocab_size=384",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_hidden_layers=1",
    "model.tiny.num_attention_heads=1",
    "data.global_batch_size=8",
    "data.tokens_per_micro_batch=512",
    "train.checkpoint_every=2",
    "train.keep_last=1",
    "pretrain.epochs=1",
    "sft.epochs=1",
    "joint.epochs=2",
    "run.sft_continued=true",
    "eval.backend=transformers",
    "eval.max_new_tokens=24",
]


def wdl_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wdl", "run", "--out", str(out), *SHORT, *extra]


def run_command(cmd: list[str], *, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session; on a timeout kill its whole process group (launcher workers included)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:6])} ... timed out after {timeout} s\n"
                             f"{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_wdl(out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_command(wdl_command(out, *extra), timeout=timeout)
