"""Branching runs (`wdl run --from DIR --out NEW`): a joint.lam ablation of the finished tiny run takes its
data, base, scores, SFT model, sampling, the continued-SFT baseline (no weak model: lam does not reach it) and
those models' eval (hard links), trains and evaluates only the new joint model, and ends with the results of a
fresh run of the new config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_helpers import run_wdl
from safetensors.torch import load_file

ABLATION = ("joint.lam=0.3", "run.eval_base=false")
REUSED_PHASES = ["data", "pretrain", "score_base", "sft", "score_sft", "weights", "sft_continued"]
REUSED_EVALS = ["eval.sft", "eval.sft_continued"]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def branch(finished_run, tmp_path_factory):
    source, _ = finished_run
    out = tmp_path_factory.mktemp("branch") / "lam03"
    proc = run_wdl(out, *ABLATION, "--from", str(source))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return source, out, proc


def test_branch_reuses_the_phases_the_new_config_shares(branch):
    source, out, proc = branch
    for name in REUSED_PHASES:
        assert f"phase {name}: reused from {source} (hard links)" in proc.stdout, name
    for name in REUSED_EVALS:
        assert f"eval {name[5:]}: reused from {source}" in proc.stdout, name
    assert "phase joint: reused" not in proc.stdout and "evaluating wmss" in proc.stdout
    assert "evaluating sft" not in proc.stdout and "evaluating base" not in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["reused"] == {name: str(source) for name in REUSED_PHASES + REUSED_EVALS}
    assert "## Reused phases" in (out / "report.md").read_text()
    # hard links: the SFT model's weights are the source's file; no checkpoints were taken
    assert (out / "sft" / "model.safetensors").samefile(source / "sft" / "model.safetensors")
    assert not (out / "work" / "sft").exists() and (out / "work" / "joint").is_dir()
    assert _log(out / "logs" / "sft.jsonl") == _log(source / "logs" / "sft.jsonl")


def test_branch_equals_a_fresh_run_of_the_new_config(branch, tmp_path):
    _, out, _ = branch
    fresh = tmp_path / "fresh"
    proc = run_wdl(fresh, *ABLATION)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["loss"] for r in _log(out / "logs" / "joint.jsonl")] == [
        r["loss"] for r in _log(fresh / "logs" / "joint.jsonl")
    ]
    got, want = load_file(out / "wmss" / "model.safetensors"), load_file(fresh / "wmss" / "model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)

    def accuracy(run):
        ev = json.loads((run / "report.json").read_text())["eval"]
        return {m: {b: (r["accuracy"], r["n"]) for b, r in res.items()} for m, res in ev.items()}

    assert accuracy(out) == accuracy(fresh) and set(accuracy(out)) == {"sft", "sft_continued", "wmss"}
    for phase in ("sft", "sft_continued"):  # the reused phases' logs and models equal the fresh run's
        assert [r["loss"] for r in _log(out / "logs" / f"{phase}.jsonl")] == [
            r["loss"] for r in _log(fresh / "logs" / f"{phase}.jsonl")
        ], phase
        got = load_file(out / phase / "model.safetensors")
        want = load_file(fresh / phase / "model.safetensors")
        assert all((got[k] == want[k]).all() for k in want), phase
    for model in ("sft", "sft_continued", "wmss"):  # the graded samples are the same
        assert (out / "eval" / model / "synthetic.jsonl").read_text() == (
            fresh / "eval" / model / "synthetic.jsonl"
        ).read_text()


def test_from_needs_a_run_directory(tmp_path, capsys):
    from wdl.cli import main

    assert main(["run", "--out", str(tmp_path / "new"), "--from", str(tmp_path / "nothing")]) == 2
    assert f"--from {tmp_path / 'nothing'}: not a run directory with finished phases" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "new"), "--copy"]) == 2
    assert "--copy goes with --from DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, differs",
    [
        ("joint.lam=0.3", {"joint"}),
        ("joint.freeze_weak=true", {"joint"}),
        ("joint.kernel_mode=fast", {"joint", "sft_continued"}),
        ("sft.lr=2e-5", {"sft"}),
        ("sampling.alpha=0.2", {"weights"}),
        ("eval.max_new_tokens=8", set()),  # eval has its own per-model markers
    ],
)
def test_which_phases_a_change_reaches(change, differs, tmp_path):
    """The config part of each phase's fingerprint: an ablation reaches the phases that read the key, and no
    other (a phase's later inputs, e.g. joint's SFT model, add their content digests at run time)."""
    from wdl.config import load_pipeline_config
    from wdl.pipeline import PHASES, Pipeline

    def parts(*overrides):
        pipe = Pipeline(load_pipeline_config(None, list(overrides)), tmp_path / "run")
        return {p.name: pipe.phase_config(p.config, p.ignores) for p in PHASES}

    base, changed = parts(), parts(change)
    assert {name for name in base if base[name] != changed[name]} == differs


def test_reuse_copies_or_links_only_what_verifies(finished_run, tmp_path):
    """wdl.branching.reuse_phase: the marker's fingerprint and every output file must match; copy=True copies
    (no shared inode), and a refused phase leaves the target untouched."""
    import shutil

    from wdl.branching import reuse_phase
    from wdl.run_dir import Fingerprint, RunPaths

    source = RunPaths(shutil.copytree(finished_run[0], tmp_path / "source", symlinks=True))
    marker = json.loads(source.marker("sft").read_text())
    fp = Fingerprint.from_json(marker["fingerprint"])
    outputs, log = {"sft": "sft"}, ("logs/sft.jsonl",)

    copied = RunPaths(tmp_path / "copied")
    digests, how = reuse_phase(source, copied, "sft", fp, outputs, extra_files=log, copy=True)
    assert how == "copy" and digests == {"sft": marker["outputs"]["sft"]["digest"]}
    weights = copied.root / "sft" / "model.safetensors"
    assert weights.read_bytes() == (source.root / "sft" / "model.safetensors").read_bytes()
    assert not weights.samefile(source.root / "sft" / "model.safetensors")
    assert json.loads(copied.marker("sft").read_text())["reused_from"] == str(source.root)
    assert (copied.root / "logs" / "sft.jsonl").is_file()

    other = Fingerprint(config="0" * 64, inputs=dict(fp.inputs))  # another config: not taken
    refused = RunPaths(tmp_path / "refused")
    assert reuse_phase(source, refused, "sft", other, outputs) is None
    (source.root / "sft" / "config.json").write_text("{}")  # a changed output file: not taken either
    assert reuse_phase(source, refused, "sft", fp, outputs) is None
    assert not refused.root.exists()
