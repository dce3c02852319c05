"""Fault injection on training checkpoints (one process, fake loader): a planted pickle never runs, damage is
named and the newest checkpoint that verifies is resumed from (bitwise the same losses), a full disk leaves no
half-written checkpoint, a checkpoint of other inputs is refused, non-finite weights are never exported."""

from __future__ import annotations

import contextlib
import errno
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fake_data import FakeDataConfig, FakeStepLoader, use_fake_loader
from wdl.io import DiskFullError, read_jsonl
from wdl.models import JointModel
from wdl.train import TrainConfig, extract_submodel, train_phase
from wdl.train.checkpoint import CheckpointError, complete_checkpoints, verify_checkpoint
from wdl.train.loop import NonFiniteWeightsError

DATA = FakeDataConfig(tokens_per_micro_batch=48, micro_batches_per_step=2)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        lr=3e-3,
        max_steps=4,
        warmup_ratio=0.0,
        schedule="constant",
        tensorboard=False,
        checkpoint_every=2,
        keep_last=2,
        dtype="fp32",
        kernel_impl="torch",
    )
    base.update(kw)
    return TrainConfig(**base)


def _train(root: Path, model_pair, samples, cfg=None, **kw):
    return train_phase(
        "sft", model_pair[0], samples, DATA, cfg or _cfg(), root / "work", root / "out", root / "log.jsonl", **kw
    )


def _losses(root: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(root / "log.jsonl")]


class _Plant:
    """A pickle that creates a file when it is unpickled: stands for arbitrary code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def _fake_loader(monkeypatch):
    use_fake_loader(monkeypatch)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, model_pair, samples) -> Path:
    """One finished 4-step run (checkpoints at steps 2 and 4, export, log), copied by the tests that damage it."""
    import wdl.train.loop as loop

    original, loop.StepLoader = loop.StepLoader, FakeStepLoader
    try:
        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("pristine")
        _train(root, model_pair, samples)
    finally:
        loop.StepLoader = original
    assert [s for s, _ in complete_checkpoints(root / "work")] == [2, 4]
    return root


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    """A copy of the pristine run whose export is gone: the next train_phase resumes from its checkpoints."""
    root = tmp_path / "run"
    shutil.copytree(pristine, root)
    shutil.rmtree(root / "out")
    return root


def test_a_pristine_checkpoint_verifies(pristine):
    for _, path in complete_checkpoints(pristine / "work"):
        assert verify_checkpoint(path) == []
        assert (path / "rank0.safetensors").is_file() and not list(path.glob("*.pt"))


def test_planted_pickles_never_run_and_resume_falls_back(run, pristine, model_pair, samples, capsys, tmp_path):
    pwned = tmp_path / "PWNED"
    evil = pickle.dumps(_Plant(pwned))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Plant(probe)))
    assert probe.exists()  # the plant works when unpickled
    step4 = run / "work" / "step-4"
    (step4 / "state" / ".metadata").write_bytes(evil)  # DCP's reader unpickles this file
    (step4 / "rank0.pt").write_bytes(evil)  # the per-rank file name of older versions (torch.load)
    summary = _train(run, model_pair, samples)
    assert not pwned.exists()  # nothing planted was unpickled
    err = capsys.readouterr().err
    assert f"checkpoint {step4} fails verification: {step4 / 'state' / '.metadata'}" in err
    assert "resuming from step-2, the newest checkpoint that verifies" in err
    assert summary.resumed_from == 2
    assert (run / "work" / "step-4.failed" / "rank0.pt").is_file()  # kept aside for inspection, never read
    assert verify_checkpoint(run / "work" / "step-4") == []  # step 4 saved again
    assert _losses(run) == _losses(pristine)  # bitwise: the resumed run equals the uninterrupted one


def test_a_bit_flip_is_named_and_the_older_checkpoint_is_used(run, pristine, model_pair, samples, capsys):
    shard = run / "work" / "step-4" / "state" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    shard.write_bytes(bytes(data))
    summary = _train(run, model_pair, samples)
    err = capsys.readouterr().err
    assert f"{shard}: its content differs from when it was written" in err
    assert summary.resumed_from == 2 and _losses(run) == _losses(pristine)
    got = (run / "out" / "model.safetensors").read_bytes()
    assert got == (pristine / "out" / "model.safetensors").read_bytes()  # the same model is exported


@pytest.mark.parametrize(
    "damage", ["truncate_shard", "truncate_rank_state", "bad_trainer_state", "edit_manifest", "bad_marker_json"]
)
def test_no_verifying_checkpoint_stops_with_the_fix(pristine, tmp_path, model_pair, samples, damage):
    root = tmp_path / "run"
    shutil.copytree(pristine, root)
    shutil.rmtree(root / "out")
    shutil.rmtree(root / "work" / "step-2")  # one checkpoint left
    step4 = root / "work" / "step-4"
    target, expected = {
        "truncate_shard": ("state/__0_0.distcp", "bytes, {} when it was written (truncated or replaced)"),
        "truncate_rank_state": ("rank0.safetensors", "bytes, {} when it was written (truncated or replaced)"),
        "bad_trainer_state": ("trainer_state.json", "when it was written (truncated or replaced)"),
        "edit_manifest": ("MANIFEST.json", "does not match the SHA-256 recorded in"),
        "bad_marker_json": ("COMPLETE.json", "not valid JSON"),
    }[damage]
    path = step4 / target
    size = path.stat().st_size
    if damage.startswith("truncate"):
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "edit_manifest":
        path.write_text(path.read_text().replace('"size": ', '"size": 1', 1))
    else:
        path.write_text('{"step": 4,')
    log_before = (root / "log.jsonl").read_text()
    with pytest.raises(CheckpointError) as e:
        _train(root, model_pair, samples)
    message = str(e.value)
    assert str(step4.name) in message and target.split("/")[-1] in message, message
    assert expected.format(size) in message, message
    assert f"delete {root / 'work'} to train it again from its first step" in message
    # nothing was loaded or changed: the damaged checkpoint stays where it is, no export, the log untouched
    assert step4.is_dir() and not (root / "out").exists()
    assert (root / "log.jsonl").read_text() == log_before


def test_disk_full_during_a_checkpoint_save(tmp_path, model_pair, samples, pristine, monkeypatch):
    from torch.distributed.checkpoint import filesystem

    class FullDisk:
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.stream, name)

    original = filesystem.FileSystem.create_stream

    @contextlib.contextmanager
    def create_stream(self, path, mode):
        with original(self, path, mode) as stream:
            yield FullDisk(stream) if "w" in mode and ".step-4.tmp" in str(path) else stream

    monkeypatch.setattr(filesystem.FileSystem, "create_stream", create_stream)
    root = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        _train(root, model_pair, samples)
    assert str(e.value) == f"no space left on device while writing {root / 'work' / 'step-4'}"
    work = root / "work"
    assert sorted(p.name for p in work.iterdir()) == ["step-2"]  # no half-written step 4, not even a temporary
    assert verify_checkpoint(work / "step-2") == [] and not (root / "out").exists()
    monkeypatch.setattr(filesystem.FileSystem, "create_stream", original)  # space freed
    summary = _train(root, model_pair, samples)
    assert summary.resumed_from == 2 and _losses(root) == _losses(pristine)


def test_a_checkpoint_of_other_inputs_is_refused(tmp_path, model_pair, samples):
    root = tmp_path / "run"
    _train(root, model_pair, samples, _cfg(max_steps=2), fingerprint="a" * 64)
    shutil.rmtree(root / "out")
    with pytest.raises(
        CheckpointError,
        match=r"written for other inputs or settings than this sft phase has "
        r"\(fingerprint aaaaaaaaaaaa, now bbbbbbbbbbbb\).*delete .*work",
    ):
        _train(root, model_pair, samples, _cfg(max_steps=2), fingerprint="b" * 64)
    assert _train(root, model_pair, samples, _cfg(max_steps=2), fingerprint="a" * 64).resumed_from == 2


def _nan_loss(monkeypatch):
    original = JointModel.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(JointModel, "forward", forward)


def test_every_step_non_finite_under_skip_fails_the_phase(tmp_path, model_pair, samples, monkeypatch):
    _nan_loss(monkeypatch)
    with pytest.raises(
        NonFiniteWeightsError,
        match=r"phase sft: all 3 steps had a non-finite loss or gradient and "
        r"were skipped \(train.nan_policy=skip\).*lower the learning rate",
    ):
        _train(tmp_path, model_pair, samples, _cfg(max_steps=3, nan_policy="skip"))
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_are_never_exported(tmp_path, model_pair, samples, monkeypatch):
    from wdl.train.torch_backend import SingleBackend

    original = SingleBackend.optimizer_step

    def poisoned(self, lr, loss_finite):  # an update that overflows (e.g. a huge learning rate)
        result = original(self, lr, loss_finite)
        with torch.no_grad():
            self.params[0].fill_(float("inf"))
        return result

    monkeypatch.setattr(SingleBackend, "optimizer_step", poisoned)
    with pytest.raises(
        NonFiniteWeightsError,
        match=r"phase sft: the trained weights hold NaN/inf in \d+ tensors "
        r"\(e.g. .*\) after 3 steps.*sft.lr",
    ):
        _train(tmp_path, model_pair, samples, _cfg(max_steps=3, nan_policy="skip"))
    assert not (tmp_path / "out").exists()


def test_extract_verifies_before_reading(pristine, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(pristine, root)
    pwned = tmp_path / "PWNED"
    (root / "work" / "step-4" / "state" / ".metadata").write_bytes(pickle.dumps(_Plant(pwned)))
    with pytest.raises(CheckpointError, match=r"step-4 fails verification: .*\.metadata"):
        extract_submodel(root / "work" / "step-4", tmp_path / "x")
    (tmp_path / ".strong.x1y2.tmp").mkdir()  # what an interrupted extract into the same --out left
    (tmp_path / ".strong.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".other.x1y2.tmp").mkdir()  # not ours to judge: another target's
    out = extract_submodel(root / "work", tmp_path / "strong")  # the work dir: the newest that verifies
    assert not (tmp_path / ".strong.x1y2.tmp").exists() and (tmp_path / ".other.x1y2.tmp").exists()
    assert not pwned.exists()
    assert "using step-2, the newest checkpoint of" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
    # --out: a previous export is replaced, anything else is refused before any work
    extract_submodel(root / "work" / "step-2", out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and does not hold a model exported by wdl"):
        extract_submodel(root / "work" / "step-2", out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file, not a directory"):
        extract_submodel(root / "work" / "step-2", out / "notes.txt")


def _tree_bytes(root: Path) -> int:
    """Bytes `root` takes on a tmpfs (each file rounded up to whole pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in root.rglob("*") if p.is_file())


def test_a_real_full_disk_while_checkpointing(tmp_path, model_pair, samples, pristine):
    """A real ENOSPC (a tmpfs too small for a second checkpoint): the error names the checkpoint, nothing
    half-written is left, and after the space is freed (a bigger tmpfs) the run resumes with the same losses."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    step = _tree_bytes(pristine / "work" / "step-2")
    size = step + step // 2  # room for step 2 and half of step 4
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size + (64 << 10)}", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = mnt / "run"
        with pytest.raises(DiskFullError) as e:
            _train(root, model_pair, samples)
        assert str(e.value) == f"no space left on device while writing {root / 'work' / 'step-4'}"
        assert sorted(p.name for p in (root / "work").iterdir()) == ["step-2"]
        assert verify_checkpoint(root / "work" / "step-2") == [] and not (root / "out").exists()
        subprocess.run(["mount", "-o", f"remount,size={4 * size + (16 << 20)}", str(mnt)], check=True)
        summary = _train(root, model_pair, samples)
        assert summary.resumed_from == 2 and _losses(root) == _losses(pristine)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
