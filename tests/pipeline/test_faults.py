"""Fault injection on `wdl run` and friends: each case ends in one line naming the file (or argument) and the fix,
and leaves the run directory as it was (or as the fix says). Copies of the shared finished run are damaged;
the commands run in this process (`wdl.cli.main`) unless the case needs a process of its own (Ctrl-C, a
second concurrent run)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_helpers import REPO, SHORT, wdl_command

from wdl.cli import main
from wdl.config import load_pipeline_config
from wdl.io import DiskFullError, read_jsonl
from wdl.pipeline import PHASES, Pipeline


def _copy(finished_run, tmp_path: Path, name: str = "run") -> Path:
    out = tmp_path / name
    shutil.copytree(finished_run[0], out, ignore=shutil.ignore_patterns("cache"))
    return out


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _run(out: Path, *extra: str, command: str = "run") -> int:
    return main([command, "--out", str(out), *SHORT, *extra])


def test_markers_of_another_config_are_refused_when_config_yaml_is_gone(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    (out / "config.yaml").unlink()
    before = _mtimes(out)
    assert _run(out, "sft.lr=0.01") == 2
    err = capsys.readouterr().err
    assert (
        f"{out / 'phases' / 'sft.json'}: phase sft was completed here with a different config than this run has" in err
        and "start a new run with another --out" in err
    )
    assert _mtimes(out) == before and not (out / "config.yaml").exists()  # nothing touched, no config adopted
    assert _run(out) == 0  # the original config: every phase verifies and is skipped
    assert "phase joint: complete, skipped" in capsys.readouterr().out
    assert (out / "config.yaml").is_file()


def test_foreign_markers_without_their_artifacts_are_refused(finished_run, tmp_path, capsys):
    out = tmp_path / "new"
    out.mkdir()
    shutil.copytree(finished_run[0] / "phases", out / "phases")
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert (
        f"phase data is marked complete ({out / 'phases' / 'data.json'}) but its output changed since: "
        f"{out / 'data' / 'train.jsonl'}: missing" in err
    )
    assert sorted(p.name for p in out.iterdir()) == [".wdl.lock", "phases"]  # nothing was produced


def test_a_truncated_model_is_named_and_the_fix_works(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    weights = out / "sft" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert (
        f"phase sft is marked complete ({out / 'phases' / 'sft.json'}) but its output changed since: {weights}: "
        f"{len(good) // 2} bytes, {len(good)} when it was written (truncated or replaced)" in err
    )
    assert f"delete {out / 'phases' / 'sft.json'} to redo that phase" in err
    # the same file given to the evaluator
    assert main(["eval", str(out / "sft"), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("wdl eval: error: ")
        and f"{weights}: truncated ({len(good) // 2} bytes, its header describes {len(good)})" in err
    )
    # the fix: delete the marker. Meanwhile an interrupted write left temporaries; they are removed on start
    (out / "phases" / "sft.json").unlink()
    (out / ".wmss.x1.tmp").mkdir()
    (out / "phases" / ".joint.json.y2.tmp").write_text("{")
    (out / "logs" / ".sft.jsonl.z3.tmp").write_text("")
    assert _run(out) == 0
    captured = capsys.readouterr().out
    assert "removed 3 leftovers of interrupted writes" in captured
    assert "phase score_sft: complete, skipped" in captured  # the export is the same: nothing after it is redone
    assert weights.read_bytes() == good  # re-exported from the final checkpoint, bit for bit
    assert not list(out.rglob("*.tmp"))


def test_a_damaged_marker_is_named(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    (out / "phases" / "weights.json").write_text('{"phase": "weights", ')
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert f"{out / 'phases' / 'weights.json'}:1: not valid JSON" in err and "a damaged phase marker; delete" in err


def test_a_phase_whose_input_was_redone_is_redone(finished_run, tmp_path):
    out = _copy(finished_run, tmp_path)
    pipe = Pipeline(load_pipeline_config(None, SHORT), out)
    phases = {p.name: p for p in PHASES}
    for name in ("data", "pretrain", "sft"):  # what the phases before score_sft recorded
        marker = json.loads((out / "phases" / f"{name}.json").read_text())
        pipe.output_digests.update({k: v["digest"] for k, v in marker["outputs"].items()})
    assert pipe.decide(phases["score_sft"])[0] == "skip"
    pipe.output_digests["sft"] = "0" * 64  # sft came out different
    kind, message = pipe.decide(phases["score_sft"])
    assert kind == "error" and "a different input sft" in message  # not redone here: refused
    pipe._redone.add("sft")  # ... because this command redid it: its consumers are redone too
    assert pipe.decide(phases["score_sft"])[0] == "redo"


def _own_data_args(finished_run, tmp_path) -> tuple[Path, list[str]]:
    data = tmp_path / "mine.jsonl"
    shutil.copy(finished_run[0] / "data" / "train.jsonl", data)
    return data, [
        "synthetic.enabled=false",
        f"model.base={finished_run[0] / 'base'}",
        f"data.sources=[{data}]",
        "run.eval=false",
    ]


def test_a_data_edit_between_runs_is_refused_unless_allowed(finished_run, tmp_path, capsys):
    data, args = _own_data_args(finished_run, tmp_path)
    out = tmp_path / "own"
    assert _run(out, *args, command="score") == 0
    scores = (out / "scores" / "base.jsonl").read_text()
    rows = data.read_text().splitlines()
    rows[3] = rows[3].replace("answer is", "answer is clearly")  # same path, record count and idx
    data.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert _run(out, *args, command="score") == 2
    err = capsys.readouterr().err
    assert (
        f"the training data changed since this run started: {data} (content recorded in {out / 'data_sources.json'})"
        in err
        and "--allow-data-change" in err
    )
    assert (out / "scores" / "base.jsonl").read_text() == scores
    assert _run(out, *args, "--allow-data-change", command="score") == 0
    captured = capsys.readouterr().out
    assert "going on with the new content" in captured and "phase score_base: complete, skipped" in captured


def test_extract_never_replaces_what_is_not_an_export(finished_run, tmp_path, capsys):
    work = finished_run[0] / "work" / "joint"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["extract", "--from", str(work), "--out", str(mine)]) == 2
    assert f"{mine} is not empty and does not hold a model exported by wdl" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["extract", "--from", str(work), "--out", str(mine / "notes.txt")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["extract", "--from", str(work), "--out", str(tmp_path / "strong")]) == 0
    assert main(["extract", "--from", str(work), "--out", str(tmp_path / "strong")]) == 0  # ours: replaced


def _read_only(path: Path):
    """Make `path` read-only for this process (root ignores permission bits: the immutable attribute)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a directory read-only")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_out_dir_that_is_a_file_or_read_only(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _run(a_file) == 2
    assert (
        f"wdl run: error: the run directory {a_file} is a file, not a directory: choose another --out"
        in capsys.readouterr().err
    )
    assert _run(a_file / "sub") == 2
    assert "a part of that path is a file" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _read_only(ro)
    try:
        assert _run(ro) == 2
    finally:
        undo()
    err = capsys.readouterr().err
    assert f"wdl run: error: the run directory {ro} is not writable (" in err and "Traceback" not in err
    assert list(ro.iterdir()) == []


def test_missing_model_files_and_offline_hub(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    data = tmp_path / "d.jsonl"
    data.write_text('{"idx": 0, "question": "1+1?", "answer": "2"}\n')
    own = ["synthetic.enabled=false", f"data.sources=[{data}]", "run.eval=false"]
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert _run(tmp_path / "r", *own, f"model.base={empty}") == 2
    assert (
        f"model.base: {empty}: no config.json: not a Hugging Face model directory (missing model files)"
        in capsys.readouterr().err
    )
    assert _run(tmp_path / "r", *own, f"model.base={tmp_path / 'nowhere' / 'model'}") == 2
    assert f"{tmp_path / 'nowhere' / 'model'}: does not exist" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert _run(tmp_path / "r", *own, "model.base=Qwen/Qwen3-Nonexistent-Base") == 2
    err = capsys.readouterr().err
    assert (
        "model.base 'Qwen/Qwen3-Nonexistent-Base': not a local directory, and not in the Hugging Face cache nor "
        "reachable on the hub"
        in err
        and "hf download Qwen/Qwen3-Nonexistent-Base" in err
    )
    assert not (tmp_path / "r").exists()  # refused before any work


def test_disk_full_inside_a_phase_names_the_run_and_phase(finished_run, tmp_path, capsys, monkeypatch):
    out = _copy(finished_run, tmp_path)
    (out / "phases" / "score_base.json").unlink()

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")  # e.g. a library's write, no file named

    monkeypatch.setattr(Pipeline, "phase_score_base", full)
    assert _run(out) == 1
    err = capsys.readouterr().err
    assert f"wdl run: error: no space left on device while writing {out} (phase score_base): free some space" in err
    assert not (out / "phases" / "score_base.json").exists()


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, target=None):
        raise DiskFullError(self.paths.root / "work" / "sft" / "step-4")

    monkeypatch.setattr(Pipeline, "run", full)
    assert _run(tmp_path / "r") == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"wdl run: error: no space left on device while writing {tmp_path / 'r' / 'work' / 'sft'}"
        "/step-4: free some space and rerun the same command to resume (nothing half-written is "
        "kept)"
    )


def test_a_second_run_is_refused_and_ctrl_c_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        wdl_command(out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while not read_jsonl(out / "logs" / "pretrain.jsonl"):  # training: the lock is held
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
            time.sleep(0.05)
        assert _run(out) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another wdl command: pid {proc.pid} on " in err and "(wdl run --out" in err
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "wdl run: interrupted; rerun the same command to resume"
    assert "Traceback" not in stderr
    assert not (out / ".wdl.lock.json").exists()  # released on the way out
    assert not (out / "report.json").exists()  # stopped mid-run (whichever phase the signal reached)


def test_ctrl_c_inside_a_checkpoint_read_is_one_line(tmp_path, capsys, monkeypatch):
    # torch.distributed.checkpoint re-raises a KeyboardInterrupt that lands in its reader as a CheckpointException
    # (seen when Ctrl-C reached a finished phase's checkpoint rewrite): still the one-line interrupt, exit 130.
    import torch
    import torch.distributed.checkpoint as dcp

    from wdl.cli import _guarded

    dcp.save({"w": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dcp.FileSystemReader, "read_data", interrupted)

    def load():
        dcp.load({"w": torch.zeros(3)}, storage_reader=dcp.FileSystemReader(str(tmp_path / "ckpt")), no_dist=True)

    with pytest.raises(BaseException) as raw:  # what the command would otherwise die of
        load()
    assert not isinstance(raw.value, KeyboardInterrupt)
    assert _guarded("run", load) == 130
    err = capsys.readouterr().err
    assert err.strip() == "wdl run: interrupted; rerun the same command to resume"

    def fails():
        raise RuntimeError("not an interrupt")

    with pytest.raises(RuntimeError):  # anything else keeps its traceback
        _guarded("run", fails)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.weight_decay=.inf", "train.weight_decay: must be a finite number, got inf"),
        ("sft.weight_decay=1e300", "sft.weight_decay: lr * weight_decay must be < 1"),
        ("joint.eps=1e300", "joint.eps: must be a number in (0, 1), got 1e+300"),
        ("train.max_grad_norm=.inf", "train.max_grad_norm: must be a finite number, got inf"),
        ("sampling.multiplier=1e300", "sampling.multiplier: must be in (0, 1000]"),
        ("sampling.size=1000000000000000000000000000000", "sampling.size: must be an integer below 2**63"),
        ("sampling.size=10000000000", "sampling.size: must be in [1, 1000000000] or null"),
        ("sampling.brownboost.lambda_time=.inf", "sampling.brownboost.lambda_time: must be a finite number, got inf"),
        ("sampling.brownboost.lambda_time=1e999", "sampling.brownboost.lambda_time: must be a finite number"),
        ("sft.epochs=1e300", "sft.epochs: must be in (0, 10000]"),
        ("sft.seed=100000000000", "sft.seed: must be in [0, 2**32)"),
        ("data.max_length=1.0e+300", "data.max_length: must be an integer below 2**63"),
        ("data.global_batch_size=100000000", "data.global_batch_size: must be an integer in [1, 16777216]"),
        ("trian.lr=1", "override 'trian.lr=1': trian: unknown key; did you mean 'train'?"),
        ("sft.lr.x=1", "override 'sft.lr.x=1': sft.lr: expected a number, got {'x': 1}"),
        ("data.sources=[1,2]", "override 'data.sources=[1,2]': data.sources[0]: expected a string, got 1"),
    ],
)
def test_bad_values_fail_before_any_work(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    if not override.startswith(("trian", "sft.lr.x", "data.sources")):
        assert f"override '{override}': " in err  # blamed on the override, never on the preset file
    assert not out.exists()


def test_an_edited_eval_set_is_evaluated_again_for_every_model(tmp_path):
    bench = tmp_path / "mine.jsonl"
    bench.write_text('{"question": "1+1?", "answer": "2"}\n')
    cfg = load_pipeline_config(None, [*SHORT, f"eval.benchmarks=[{{name: mine, path: {bench}, format: qa}}]"])
    pipe = Pipeline(cfg, tmp_path / "run")
    ev = pipe.eval_config()
    settings = {"x": 1}
    before = pipe.eval_fingerprint("sft", "m", settings, pipe.benchmark_digests(ev))
    assert list(pipe.benchmark_digests(ev)) == ["set mine"]  # the synthetic set is covered by the data phase
    bench.write_text('{"question": "1+1?", "answer": "3"}\n')  # same path, same size
    after = pipe.eval_fingerprint("sft", "m", settings, pipe.benchmark_digests(ev))
    assert before.differences(after) == ["input set mine"]


def test_data_paths_and_a_failed_start(finished_run, tmp_path, capsys, monkeypatch):
    import datasets

    data, args = _own_data_args(finished_run, tmp_path)
    base = [a for a in args if not a.startswith("data.sources")]
    # a mistyped path: refused before any work (no run directory, nothing recorded)
    assert _run(tmp_path / "typo", *base, f"data.sources=[{tmp_path / 'mine.jsnl'}]", command="score") == 2
    err = capsys.readouterr().err  # the preflight's line (or, with --no-preflight, the pipeline's own check)
    assert err.startswith("wdl score: error: ") and f"data.sources: {tmp_path / 'mine.jsnl'} does not exist" in err
    assert not (tmp_path / "typo").exists()
    assert (
        _run(tmp_path / "typo", *base, f"data.sources=[{tmp_path / 'mine.jsnl'}]", "--no-preflight", command="score")
        == 2
    )
    assert f"wdl score: error: data.sources: {tmp_path / 'mine.jsnl'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    # a hub name (org/name) is a dataset, not a path; offline it is one line naming it
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert _run(tmp_path / "hub", *base, "data.sources=[someorg/no-such-set]", command="score") == 2
    err = capsys.readouterr().err
    assert (
        "data.sources: someorg/no-such-set: not a local file, and the Hugging Face dataset could not be loaded" in err
        and "Traceback" not in err
    )
    # a bad record stops the first start; after fixing it (same path) the run starts: nothing depended on it yet
    good = data.read_text()
    data.write_text(good.replace('"idx": 3', '"idx": -3', 1))
    out = tmp_path / "own"
    assert _run(out, *args, command="score") == 2
    assert f"{data}:" in capsys.readouterr().err
    data.write_text(good)
    assert _run(out, *args, "data.on_bad_record=skip", command="score") == 0  # a new config is taken too
    assert (out / "phases" / "score_base.json").is_file()


def test_a_real_full_disk_then_resume(finished_run, tmp_path, capsys):
    """A real ENOSPC (a tmpfs that fills up while the SFT model is exported again): one line naming what was
    being written, nothing half-written kept; with more space the same command finishes, and the model comes out
    bit for bit the same (so every later phase is skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = _copy(finished_run, mnt)
        good = (out / "sft" / "model.safetensors").read_bytes()
        shutil.rmtree(out / "sft")
        (out / "phases" / "sft.json").unlink()
        # what is left free: the log's rewrite and half of the model (the datasets cache lives elsewhere)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - (64 << 10) - len(good) // 2))
        # data.cache_dir may change on resume (it changes no artifact); --no-preflight: the disk is filled on
        # purpose to fail inside the phase (the preflight's estimate, with its margin, would stop it before)
        cache = [f"data.cache_dir={tmp_path / 'cache'}", "--no-preflight"]
        assert _run(out, *cache) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            f"wdl run: error: no space left on device while writing {out / 'sft'}: free some space and "
            "rerun the same command to resume (nothing half-written is kept)"
        ), err
        assert not (out / "sft").exists() and not list(out.rglob("*.tmp"))
        filler.unlink()  # space freed
        assert _run(out, *cache) == 0
        captured = capsys.readouterr().out
        assert (out / "sft" / "model.safetensors").read_bytes() == good
        assert "phase joint: complete, skipped" in captured
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
