"""Disk discipline and console output of the finished tiny run: finished phases keep model-only checkpoints
(`train.drop_optimizer_state`, on by default) and `keep_last` of them, their exports verify and reload, a
deleted export is rebuilt from the model-only checkpoint; progress lines, the resume notice and the run's setup
in report.json."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp

from wdl.cli import main
from wdl.models import check_export, check_hf_checkpoint
from wdl.train.checkpoint import complete_checkpoints

PHASE_EXPORTS = {"pretrain": "base", "sft": "sft", "joint": "wmss", "sft_continued": "sft_continued"}


def test_finished_phases_keep_model_only_checkpoints(finished_run):
    out, _ = finished_run
    for phase, export in PHASE_EXPORTS.items():
        ckpts = complete_checkpoints(out / "work" / phase)
        assert len(ckpts) == 1, (phase, ckpts)  # train.keep_last=1
        _, ckpt = ckpts[0]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["optimizer_state"] is False, phase
        keys = dcp.FileSystemReader(str(ckpt / "state")).read_metadata().state_dict_metadata
        assert keys and all(k.startswith("model.") for k in keys), phase
        check_hf_checkpoint(out / export)
        assert check_export(out / export) == []
        assert f"{phase}: export verified; optimizer state dropped from its checkpoints" in finished_run[1].stdout


def test_a_cut_export_does_not_verify(finished_run, tmp_path):
    out, _ = finished_run
    copy = shutil.copytree(out / "sft", tmp_path / "sft")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        check_hf_checkpoint(copy)
    from wdl.train.retention import drop_optimizer_state

    with pytest.raises(ValueError, match="truncated"):  # the checkpoints are left whole
        drop_optimizer_state(out / "work" / "sft", copy)


def test_a_deleted_export_is_rebuilt_from_the_model_only_checkpoint(finished_run, tmp_path, capsys):
    """A finished phase whose export is gone (and its marker with it) is exported again from its final,
    model-only checkpoint, without training: the same weights."""
    from pipeline_helpers import SHORT
    from safetensors.torch import load_file

    out, _ = finished_run
    run = shutil.copytree(out, tmp_path / "run", symlinks=True)
    shutil.rmtree(run / "sft")
    (run / "phases" / "sft.json").unlink()
    assert main(["sft", "--out", str(run), *SHORT]) == 0, capsys.readouterr().err
    assert "sft: exporting again from its final checkpoint" in capsys.readouterr().out
    got, want = load_file(run / "sft" / "model.safetensors"), load_file(out / "sft" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_progress_and_setup_in_the_logs(finished_run):
    out, proc = finished_run
    for line in (
        "scoring base: 40 samples in",
        "scoring sft: 40 samples in",
        "tokenizing train data: 40 records in",
        "tokenizing pretrain data: 40 records in",
        "preflight ok disk: up to about",
        "generating synthetic: 8 prompts in",
    ):
        assert line in proc.stdout, line
    # scoring's periodic lines (the first one at least) carry the rate and the ETA; the last the total time
    for model in ("base", "sft"):
        assert re.search(
            rf"^scoring {model}: \d+/40 samples \(\d+%\), [\d.e+]+ samples/s, elapsed \d\d:\d\d, "
            r"ETA \d\d:\d\d$",
            proc.stdout,
            re.M,
        ), model
        assert re.search(rf"^scoring {model}: 40 samples in \d\d:\d\d \([\d.e+]+ samples/s\)$", proc.stdout, re.M)
    assert "torch.distributed is disabled" not in proc.stderr  # no warning per checkpoint save
    env = json.loads((out / "report.json").read_text())["environment"]
    assert env["world_size"] == 1 and env["backend"] == "single" and env["process_group"] == "none"
    assert {"torch", "transformers", "datasets", "wdl"} <= set(env)
