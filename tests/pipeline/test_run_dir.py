"""The run directory's building blocks: manifests, phase fingerprints and marker checks (the API `wdl run --from`
builds on), the lock, atomic writes on a full disk, stale temporaries, damaged JSON."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from wdl.io import DiskFullError, atomic_directory, atomic_write_text, read_json, remove_stale_temporaries
from wdl.lock import RunDirectoryInUse, RunLock
from wdl.manifest import build_manifest, manifest_digest, verify_manifest
from wdl.run_dir import (
    PipelineError,
    RunPaths,
    artifact_digest,
    check_data_sources,
    check_marker,
    phase_fingerprint,
    read_marker,
    write_marker,
)


def _artifact(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"x" * 100)
    (root / "sub" / "b.txt").write_text("hello")
    return root


def test_manifest_names_each_problem(tmp_path):
    art = _artifact(tmp_path / "art")
    files = build_manifest(art)
    assert set(files) == {"a.bin", "sub/b.txt"} and verify_manifest(art, files) == []
    (art / "a.bin").write_bytes(b"x" * 50)
    (art / "sub" / "b.txt").write_text("HELLO")
    (art / "planted.pt").write_bytes(b"p")
    problems = verify_manifest(art, files)
    assert problems == [
        f"{art / 'a.bin'}: 50 bytes, 100 when it was written (truncated or replaced)",
        problems[1],
        f"{art / 'planted.pt'}: not part of the artifact as written (a file added later)",
    ]
    assert problems[1].startswith(f"{art / 'sub' / 'b.txt'}: its content differs from when it was written")
    (art / "sub" / "b.txt").unlink()
    assert f"{art / 'sub' / 'b.txt'}: missing" in verify_manifest(art, files)
    single = tmp_path / "one.json"
    single.write_text("{}")
    assert verify_manifest(single, build_manifest(single)) == []
    assert manifest_digest(build_manifest(single)) == artifact_digest(single)


def test_fingerprints_and_marker_checks(tmp_path):
    """The API a branching run uses: compute a phase's fingerprint, check another directory's marker for it."""
    paths = RunPaths(tmp_path / "run")
    out = _artifact(paths.root / "sft")
    fp = phase_fingerprint({"sft.lr": 1e-5, "data.max_length": 64}, {"base": "d1", "train_data": "d2"})
    assert fp == phase_fingerprint({"data.max_length": 64, "sft.lr": 1e-5}, {"train_data": "d2", "base": "d1"})
    assert check_marker(paths, "sft", fp, {"sft": out}).status == "missing"
    digests = write_marker(paths, "sft", 1.0, fingerprint=fp, outputs={"sft": out}, steps=3)
    assert digests == {"sft": artifact_digest(out)}
    check = check_marker(paths, "sft", fp, {"sft": out})
    assert check.ok and check.output_digests == digests and check.marker["steps"] == 3
    other = phase_fingerprint({"sft.lr": 2e-5, "data.max_length": 64}, {"base": "d1", "train_data": "d3"})
    stale = check_marker(paths, "sft", other, {"sft": out})
    assert stale.status == "stale" and stale.differences == ("config", "input train_data")
    assert "phase sft was completed here with a different config, input train_data" in stale.message()
    (out / "a.bin").write_bytes(b"y")
    damaged = check_marker(paths, "sft", fp, {"sft": out})
    assert damaged.status == "damaged" and str(out / "a.bin") in damaged.message()
    assert f"delete {paths.marker('sft')} to redo that phase" in damaged.message()
    paths.marker("sft").write_text('{"phase": "sft",')
    unreadable = check_marker(paths, "sft", fp, {"sft": out})
    assert unreadable.status == "unreadable"
    assert unreadable.message().startswith(f"{paths.marker('sft')}:1: not valid JSON")
    with pytest.raises(PipelineError, match="a damaged phase marker; delete"):
        read_marker(paths, "sft")
    paths.marker("sft").write_text(json.dumps({"phase": "sft", "seconds": 1}))  # an older marker
    assert check_marker(paths, "sft", fp, {"sft": out}).status == "stale"


def test_data_source_changes_are_refused_unless_allowed(tmp_path):
    paths = RunPaths(tmp_path)
    first = check_data_sources(paths, {"d.jsonl": "sha256:1"})
    assert check_data_sources(paths, {"d.jsonl": "sha256:1"}) == first
    with pytest.raises(
        PipelineError,
        match=r"the training data changed since this run started: d.jsonl .*"
        r"--allow-data-change",
    ):
        check_data_sources(paths, {"d.jsonl": "sha256:2"})
    notes = []
    assert check_data_sources(paths, {"d.jsonl": "sha256:2"}, allow_change=True, note=notes.append) == first
    assert "going on with the new content" in notes[0]
    assert check_data_sources(paths, {"d.jsonl": "sha256:2"}) == first  # accepted: the fingerprint is unchanged
    assert len(read_json(paths.data_sources)["changes"]) == 1
    paths.data_sources.write_text('{"fingerprint": ')  # damaged: named, with the fix
    with pytest.raises(
        PipelineError,
        match=rf"^{paths.data_sources}:1: not valid JSON .*: restore it, or start a new "
        r"run with another --out",
    ):
        check_data_sources(paths, {"d.jsonl": "sha256:2"})


HOLD = (
    "import sys, time; from wdl.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def _holder(directory):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryInUse) as e:
            RunLock(tmp_path).acquire()
        message = str(e.value)
        assert f"{tmp_path} is in use by another wdl command: pid {proc.pid} on " in message
        assert "started 20" in message and "Wait for it to finish or stop it" in message
    finally:
        proc.kill()
        proc.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel dropped the dead holder's lock
    assert lock.took_over["pid"] == proc.pid
    with pytest.raises(RunDirectoryInUse):  # held now: a second attempt, even in this process, is refused
        RunLock(tmp_path).acquire()
    lock.release()
    assert RunLock(tmp_path).acquire().took_over is None  # a clean release leaves no record behind


def test_disk_full_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as e:
        atomic_write_text(target, "new")
    assert str(e.value) == f"no space left on device while writing {target}"
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with pytest.raises(DiskFullError, match="while writing .*model"):
        with atomic_directory(tmp_path / "model", overwrite=True) as tmp:
            (tmp / "x").write_text("x")
            os.fsync(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_stale_temporaries_are_removed_and_a_cut_replacement_restored(tmp_path):
    (tmp_path / "phases").mkdir()
    (tmp_path / "phases" / ".sft.json.ab12.tmp").write_text("{")
    (tmp_path / ".wmss.xyz.tmp").mkdir()
    (tmp_path / ".wmss.xyz.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "sft").mkdir()
    (tmp_path / ".sft.123.old").mkdir()  # the replacement finished: the old copy goes
    (tmp_path / ".base.77.old").mkdir()  # cut between the renames: the old copy comes back
    (tmp_path / ".base.77.old" / "config.json").write_text("{}")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".x.tmp").write_text("datasets' own")
    removed = remove_stale_temporaries(tmp_path, recursive=True, skip=("cache",))
    assert len(removed) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache", "phases", "sft"]
    assert (tmp_path / "base" / "config.json").is_file() and not list((tmp_path / "phases").iterdir())
    assert (tmp_path / "cache" / ".x.tmp").exists()


def test_read_json_names_file_line_and_fix(tmp_path):
    p = tmp_path / "trainer_state.json"
    p.write_text('{\n  "step": 4,\n  oops\n}')
    with pytest.raises(ValueError, match=rf"^{p}:3: not valid JSON \(Expecting property name.*\): do this$"):
        read_json(p, fix="do this")
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=rf"^{p}: not valid UTF-8"):
        read_json(p)


def test_lock_wait_message_is_fast(tmp_path):
    proc = _holder(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunDirectoryInUse):
            RunLock(tmp_path).acquire()
        assert time.perf_counter() - t0 < 5  # refused at once, not after a timeout
    finally:
        proc.kill()
        proc.wait()


def test_read_jsonl_drops_a_torn_last_line_and_names_a_damaged_one_with_the_fix(tmp_path):
    from wdl.io import STEP_LOG_FIX, read_jsonl
    from wdl.train.loop import truncate_log

    log = tmp_path / "sft.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # a write cut short by a kill
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError) as err:
        read_jsonl(log)
    assert str(err.value) == f"{log}:2: not valid JSON (the file is damaged): repair or delete that line"
    with pytest.raises(ValueError) as err:  # a resume truncating its step log says what to do with the line
        truncate_log(log, 3)
    assert str(err.value) == f"{log}:2: not valid JSON (the file is damaged): {STEP_LOG_FIX}"
