"""Multi-process equivalence (FSDP2, DeepSpeed ZeRO-3/2 on 2 gloo processes vs one process) and exact resume
after a real `kill -9`. Every run is a child process (tests/train/train_script.py) on fake packed data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wdl.io import read_jsonl

SCRIPT = Path(__file__).with_name("train_script.py")
DATA = {"tokens_per_micro_batch": 48, "micro_batches_per_step": 4}
TRAIN = {"lr": 1e-3, "max_steps": 3, "warmup_ratio": 0.0, "tensorboard": False, "checkpoint_every": 2,
         "dtype": "fp32", "kernel_impl": "torch"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, name: str, model_pair, *, nproc: int = 1, train: dict | None = None, kill_at: int | None = None,
         weak: bool = True, expect_kill: bool = False, nan_at: int | None = None) -> Path:
    run = tmp / name
    run.mkdir(exist_ok=True)
    spec = {
        "model_dir": str(model_pair[0]), "weak_dir": str(model_pair[1]) if weak else None,
        "work_dir": str(run / "work"), "export_dir": str(run / "out"), "log_path": str(run / "log.jsonl"),
        "train": {**TRAIN, **(train or {})}, "data": DATA, "n_samples": 40, "vocab": _vocab(model_pair),
        "kill_at_step": kill_at, "nan_at_step": nan_at, "summary_path": str(run / "summary.json"),
    }
    (run / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), str(run / "spec.json")]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_port()}",
               str(SCRIPT), str(run / "spec.json")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if expect_kill:
        assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    else:
        assert res.returncode == 0, res.stderr[-5000:]
    return run


def _vocab(model_pair) -> int:
    return json.loads((Path(model_pair[0]) / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, model_pair):
    return _run(tmp_path_factory.mktemp("dist"), "single", model_pair)


def _assert_same_run(a: Path, b: Path, *, rtol: float = 1e-5, atol: float = 2e-5) -> None:
    la, lb = read_jsonl(a / "log.jsonl"), read_jsonl(b / "log.jsonl")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3]
    for ra, rb in zip(la, lb):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=rtol)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)  # a wrong reduction shows here
        assert ra["label_tokens"] == rb["label_tokens"] and ra["samples"] == rb["samples"]
    wa, wb = load_file(a / "out" / "model.safetensors"), load_file(b / "out" / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.distributed
def test_fsdp2_two_processes_match_one(tmp_path, model_pair, single_run):
    run = _run(tmp_path, "fsdp2", model_pair, nproc=2, train={"backend": "fsdp2", "activation_checkpointing": True})
    _assert_same_run(single_run, run)


@pytest.mark.distributed
def test_deepspeed_zero3_two_processes_match_one(tmp_path, model_pair, single_run):
    pytest.importorskip("deepspeed")
    run = _run(tmp_path, "zero3", model_pair, nproc=2,
               train={"backend": "deepspeed", "zero_stage": 3, "activation_checkpointing": True})
    _assert_same_run(single_run, run)
    # the ZeRO-3 checkpoint consolidates offline to the same strong model
    from wdl.train import extract_submodel

    out = extract_submodel(run / "work", tmp_path / "extracted")
    a, b = load_file(run / "out" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
def test_deepspeed_zero2_frozen_weak_two_processes(tmp_path, model_pair, tmp_path_factory):
    pytest.importorskip("deepspeed")
    frozen = {"freeze_weak": True}
    ref = _run(tmp_path, "single_frozen", model_pair, train=frozen)
    run = _run(tmp_path, "zero2", model_pair, nproc=2, train={"backend": "deepspeed", "zero_stage": 2, **frozen})
    _assert_same_run(ref, run)


def test_exact_resume_after_kill_9(tmp_path, model_pair):
    """SIGKILL after step 5 (last checkpoint at step 4), resume: per-step losses and final weights are bitwise
    those of an uninterrupted run."""
    train = {"max_steps": 7, "checkpoint_every": 2}
    full = _run(tmp_path, "full", model_pair, train=train)
    _run(tmp_path, "killed", model_pair, train=train, kill_at=5, expect_kill=True)
    killed = tmp_path / "killed"
    assert [r["step"] for r in read_jsonl(killed / "log.jsonl")] == [1, 2, 3, 4, 5]
    assert not (killed / "out").exists()
    _run(tmp_path, "killed", model_pair, train=train)  # same command again: resumes from step-4
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from"] == 4
    la, lb = read_jsonl(full / "log.jsonl"), read_jsonl(killed / "log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 8))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["grad_norm"] for r in la] == [r["grad_norm"] for r in lb]
    wa, wb = load_file(full / "out" / "model.safetensors"), load_file(killed / "out" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.distributed
def test_deepspeed_skips_a_nan_step_without_touching_the_weights(tmp_path, model_pair):
    """nan_policy=skip under ZeRO-3: a NaN in the last of 3 steps leaves the weights of a 2-step run (constant lr,
    so the runs differ only by that step), bitwise; the log marks the step."""
    pytest.importorskip("deepspeed")
    ds = {"backend": "deepspeed", "zero_stage": 3, "schedule": "constant", "nan_policy": "skip"}
    poisoned = _run(tmp_path, "nan", model_pair, train={**ds, "max_steps": 3}, nan_at=3)
    short = _run(tmp_path, "short", model_pair, train={**ds, "max_steps": 2})
    rows = read_jsonl(poisoned / "log.jsonl")
    assert rows[2]["nonfinite"] and rows[2]["skipped"] and not rows[1]["skipped"]
    assert json.loads((poisoned / "summary.json").read_text())["skipped_steps"] == 1
    a, b = load_file(poisoned / "out" / "model.safetensors"), load_file(short / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
