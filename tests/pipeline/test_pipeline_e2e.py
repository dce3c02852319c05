"""The tiny pipeline end to end in a subprocess: every output `wdl run` promises (models, report.json, per-phase
logs), skipping complete phases on a rerun, and resuming after `kill -9` with logs equal (bitwise) to an
uninterrupted run's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, run_wdl, wdl_command

TRAINING_LOGS = ("pretrain", "sft", "joint", "sft_continued")


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_outputs(finished_run):
    out, proc = finished_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"base", "sft", "sft_continued", "wmss"}
    for model, benches in report["eval"].items():
        assert "synthetic" in benches, model
        for r in benches.values():
            assert isinstance(r["accuracy"], float) and 0.0 <= r["accuracy"] <= 1.0
            assert isinstance(r["n"], int) and r["n"] == 8
            # the default grader and protocol, named on every number, with the other grader and the hashes beside
            assert (r["grader"], r["protocol"], r["mode"]) == ("reference", "paper", "greedy")
            assert isinstance(r["accuracy_lenient"], float) and r["accuracy_reference"] == r["accuracy"]
            assert all(len(r["provenance"][k]) == 64 for k in ("dataset_sha256", "grader_sha256", "model_sha256"))
    for phase in ("data", "pretrain", "score_base", "sft", "score_sft", "weights", "joint", "sft_continued",
                  "eval.base", "eval.wmss"):
        assert report["timings"][phase] >= 0.0, phase
    assert report["config"]["run"]["sft_continued"] is True
    s = report["sampling"]
    assert s["n_source"] == 40 and s["n_drawn"] == 40 and s["n_unique"] + s["n_duplicates"] == 40
    assert s["n_selected"] == s["n_unique"]  # dedup is on
    for phase in TRAINING_LOGS:
        rows = _log(out / "logs" / f"{phase}.jsonl")
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), phase
        assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in rows)
    # sft_continued trains exactly as many steps as joint, on the same resampled data
    assert len(_log(out / "logs" / "joint.jsonl")) == len(_log(out / "logs" / "sft_continued.jsonl"))
    md = (out / "report.md").read_text()
    assert "| wmss |" in md and "Phase timings" in md
    assert "Accuracy: grader reference, protocol paper, mode greedy." in md and "by grader" in md
    for metric in ("loss", "entropy", "margin"):
        png = out / "plots" / f"{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = [json.loads(line) for line in (out / "sampling" / "weights.jsonl").read_text().splitlines()]
    assert len(weights) == 40 and abs(sum(w["p"] for w in weights) - 1.0) < 1e-9
    assert "Accuracy" in proc.stdout and "Phase timings" in proc.stdout


def test_wmss_reloads_and_differs_from_sft(finished_run):
    from transformers import AutoModelForCausalLM

    out, _ = finished_run
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    sft = AutoModelForCausalLM.from_pretrained(out / "sft")
    wmss = AutoModelForCausalLM.from_pretrained(out / "wmss")
    assert type(wmss) is type(base)
    arch = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
    assert {k: getattr(wmss.config, k) for k in arch} == {k: getattr(base.config, k) for k in arch}
    sd_w, sd_s = wmss.state_dict(), sft.state_dict()
    assert sd_w.keys() == sd_s.keys()
    assert any(not torch.equal(sd_w[k], sd_s[k]) for k in sd_w)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(wmss(ids).logits).all()


def _mtimes(out: Path) -> dict[str, int]:
    files = [*(out / "sft").iterdir(), *(out / "wmss").iterdir(), *(out / "base").iterdir(),
             *(out / "scores").iterdir(), *(out / "logs").glob("*.jsonl"), *(out / "phases").iterdir()]
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file()}


def test_rerun_skips_every_phase(finished_run):
    out, _ = finished_run
    before = _mtimes(out)
    timings = json.loads((out / "report.json").read_text())["timings"]
    t0 = time.perf_counter()
    proc = run_wdl(out)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    for phase in ("data", "pretrain", "score_base", "sft", "score_sft", "weights", "joint", "sft_continued"):
        assert f"phase {phase}: complete, skipped" in proc.stdout, phase
    for model in ("base", "sft", "sft_continued", "wmss"):
        assert f"eval {model}: complete, skipped" in proc.stdout
    assert _mtimes(out) == before  # nothing retrained, rescored or re-evaluated
    assert json.loads((out / "report.json").read_text())["timings"] == timings
    assert elapsed < 60, elapsed


def _start_and_kill(out: Path, phase: str, after_rows: int = 3) -> None:
    """Start `wdl run`, kill -9 it once phase's log has `after_rows` steps (past its step-2 checkpoint)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(wdl_command(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = out / "logs" / f"{phase}.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if log.is_file() and len(log.read_text().splitlines()) >= after_rows:
                break
            assert proc.poll() is None, f"the run ended before {phase} could be interrupted"
            time.sleep(0.005)
        else:
            pytest.fail(f"{phase} did not start in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "phases" / f"{phase}.json").exists()  # interrupted mid-phase


def test_resume_after_kill_9_matches_uninterrupted(finished_run, tmp_path):
    reference, _ = finished_run
    out = tmp_path / "killed"
    _start_and_kill(out, "sft")  # killed during SFT ...
    _start_and_kill(out, "joint")  # ... then, resumed, killed again during joint training
    assert not (out / "wmss").exists()
    finished = run_wdl(out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "joint: resuming from step " in finished.stdout  # a resume is announced
    assert "torch.distributed is disabled" not in finished.stderr  # nor a warning per checkpoint load
    for phase in TRAINING_LOGS:
        got = _log(out / "logs" / f"{phase}.jsonl")
        want = _log(reference / "logs" / f"{phase}.jsonl")
        assert [r["step"] for r in got] == [r["step"] for r in want], phase  # each step once
        assert [r["loss"] for r in got] == [r["loss"] for r in want], phase  # bitwise equal

    def accuracy(run):
        ev = json.loads((run / "report.json").read_text())["eval"]
        return {m: {b: (r["accuracy"], r["n"]) for b, r in res.items()} for m, res in ev.items()}

    assert accuracy(out) == accuracy(reference)


@pytest.mark.distributed
def test_torchrun_two_ranks_fsdp2_matches_one_process(finished_run, tmp_path):
    """The whole `wdl run` under torchrun (2 gloo ranks, FSDP2): rank 0 writes the shared files and evaluates in
    a clean process; the training losses equal the single-process run's to fp32 tolerance."""
    import sys

    from pipeline_helpers import SHORT, run_command

    reference, _ = finished_run
    out = tmp_path / "dist"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = run_command([*torchrun, "-m", "wdl", "run", "--out", str(out), *SHORT, "train.backend=fsdp2"],
                       timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for phase in TRAINING_LOGS:
        got = [r["loss"] for r in _log(out / "logs" / f"{phase}.jsonl")]
        want = [r["loss"] for r in _log(reference / "logs" / f"{phase}.jsonl")]
        assert len(got) == len(want), phase
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, phase
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"base", "sft", "sft_continued", "wmss"}
    env = report["environment"]  # how it ran: two processes, FSDP2 over gloo
    assert env["world_size"] == 2 and env["backend"] == "fsdp2" and env["process_group"] == "gloo", env
    assert (out / "sampling" / "resampled.json").read_text() == (reference / "sampling" / "resampled.json").read_text()


def test_score_and_extract_commands(finished_run, tmp_path):
    """`wdl score --model` scores any model into the run; `wdl extract` rebuilds wmss/ from the joint checkpoint."""
    from pipeline_helpers import SHORT
    from safetensors.torch import load_file

    from wdl.cli import main

    out, _ = finished_run
    assert main(["score", "--out", str(out), *SHORT, "--model", str(out / "wmss"), "--name", "wmss_check"]) == 0
    rows = _log(out / "scores" / "wmss_check.jsonl")
    assert sorted(r["idx"] for r in rows) == list(range(40))
    base = {r["idx"]: r for r in _log(out / "scores" / "base.jsonl")}
    assert any(r["entropy"] != base[r["idx"]]["entropy"] for r in rows)  # a different model, other scores
    (out / "scores" / "wmss_check.jsonl").unlink()

    assert main(["extract", "--from", str(out / "work" / "joint"), "--out", str(tmp_path / "strong")]) == 0
    got, want = load_file(tmp_path / "strong" / "model.safetensors"), load_file(out / "wmss" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
