"""The training loop on one process: learning, frozen weak, token weighting, NaN policy, checkpoints, export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fake_data import FakeDataConfig, pack, use_fake_loader
from wdl.distributed import DistContext
from wdl.models import FusedMixedCrossEntropy, JointModel
from wdl.train import NonFiniteLossError, TrainConfig, train_phase
from wdl.train.checkpoint import CheckpointManager, complete_checkpoints, latest_checkpoint
from wdl.train.torch_backend import SingleBackend
from wdl.io import read_jsonl
from wdl.train.loop import Trainer
from wdl.train.optim import LRSchedule

DATA = FakeDataConfig(tokens_per_micro_batch=48, micro_batches_per_step=2)


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=3e-3, max_steps=6, warmup_ratio=0.0, schedule="constant", tensorboard=False, checkpoint_every=3,
                dtype="fp32", kernel_impl="torch")
    base.update(kw)
    return TrainConfig(**base)


def _trainer(tmp_path, model_pair, samples, cfg, weak=True) -> Trainer:
    strong, weak_dir = model_pair
    return Trainer(name="t", strong_model=strong, weak_model=weak_dir if weak else None, dataset=samples, data=DATA,
                   train=cfg, work_dir=tmp_path / "work", export_dir=tmp_path / "out", log_path=tmp_path / "log.jsonl",
                   tokenizer_path=None)


@pytest.fixture(autouse=True)
def _fake_loader(monkeypatch):
    use_fake_loader(monkeypatch)
    torch.set_num_threads(1)


@pytest.mark.parametrize("mode", ["sft", "joint", "joint_frozen"])
def test_tiny_qwen3_learns(tmp_path, model_pair, samples, mode):
    samples = samples[:8]  # a few samples, many epochs: the loss must fall clearly
    cfg = _cfg(max_steps=10, freeze_weak=mode == "joint_frozen", checkpoint_every=10)
    trainer = _trainer(tmp_path, model_pair, samples, cfg, weak=mode != "sft")
    weak_before = None
    if mode != "sft":
        weak_before = {k: v.clone() for k, v in trainer.backend.joint.weak.state_dict().items()}
    summary = trainer.run()
    rows = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
    assert summary.steps == 10 and summary.skipped_steps == 0 and summary.final_loss == rows[-1]["loss"]
    assert all(math.isfinite(r["entropy"]) and math.isfinite(r["margin"]) for r in rows)
    weak = trainer.backend.joint.weak
    if mode == "joint_frozen":
        for k, v in weak.state_dict().items():
            assert torch.equal(v, weak_before[k]), k  # bitwise unchanged
        assert all(p.grad is None and not p.requires_grad for p in weak.parameters())
        opt_params = {id(p) for g in trainer.backend.optimizer.param_groups for p in g["params"]}
        assert not any(id(p) in opt_params for p in weak.parameters())
        assert not any(id(p) in trainer.backend.optimizer.state for p in weak.parameters())
    elif mode == "joint":
        changed = [k for k, v in weak.state_dict().items() if not torch.equal(v, weak_before[k])]
        assert changed  # the weak model trains too (the paper's main setting)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_fast_kernel_mode_trains_like_lean(tmp_path, model_pair, samples):
    """train.kernel_mode=fast (gradients in the forward) gives lean's losses and weights to fp32 rounding."""
    results = []
    for mode in ("lean", "fast"):
        out = tmp_path / mode
        trainer = _trainer(out, model_pair, samples[:8], _cfg(max_steps=4, kernel_mode=mode, checkpoint_every=4))
        trainer.run()
        rows = read_jsonl(out / "log.jsonl")
        results.append(([r["loss"] for r in rows], trainer.backend.joint.strong.state_dict()))
    (lean_losses, lean_weights), (fast_losses, fast_weights) = results
    assert lean_losses == pytest.approx(fast_losses, rel=1e-5)
    for k, v in lean_weights.items():
        torch.testing.assert_close(fast_weights[k], v, rtol=1e-4, atol=1e-4)  # Adam: 1e-4 << lr 3e-3 per step


def test_token_weighted_accumulation_is_independent_of_the_split(model_pair, samples):
    """One micro-batch of 4 rows == 4 micro-batches of 1 row (different label counts per row)."""
    from wdl.models import load_causal_lm

    mbs = [pack(samples[i * 2 : i * 2 + 2], 48) for i in range(4)]
    n_global = sum(m["num_label_tokens"] for m in mbs)
    merged = {k: torch.cat([m[k] for m in mbs]) for k in ("input_ids", "labels", "position_ids")}
    grads = []
    for batches in ([merged], mbs):
        strong = load_causal_lm(model_pair[0], attn_implementation="sdpa")
        weak = load_causal_lm(model_pair[1], attn_implementation="sdpa")
        backend = SingleBackend(_cfg(), DistContext(0, 1, 0, torch.device("cpu")))
        backend.setup(JointModel(strong, weak, loss=FusedMixedCrossEntropy(impl="torch")))
        for b in batches:
            backend.forward_backward(b, n_global)
        grads.append([p.grad.clone() for p in backend.params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _inject_nan_at(monkeypatch, step_to_poison: int):
    original = JointModel.forward
    state = {"calls": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        state["calls"] += 1
        if state["calls"] > (step_to_poison - 1) * DATA.micro_batches_per_step and \
                state["calls"] <= step_to_poison * DATA.micro_batches_per_step:
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(JointModel, "forward", forward)


def test_nan_policy_stop_raises_before_the_update(tmp_path, model_pair, samples, monkeypatch):
    _inject_nan_at(monkeypatch, 2)
    trainer = _trainer(tmp_path, model_pair, samples, _cfg(nan_policy="stop"))
    snapshots = []
    original = trainer.backend.optimizer.step
    trainer.backend.optimizer.step = lambda *a, **k: (snapshots.append(1), original(*a, **k))[1]
    with pytest.raises(NonFiniteLossError, match=r"step 2: non-finite loss.*nan_policy=stop"):
        trainer.run()
    assert len(snapshots) == 1  # step 1 updated, step 2 did not
    rows = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["nonfinite"] is True and rows[1]["skipped"] is True and math.isnan(rows[1]["loss"])


def test_nan_policy_skip_counts_and_leaves_weights_untouched(tmp_path, model_pair, samples, monkeypatch):
    _inject_nan_at(monkeypatch, 2)
    trainer = _trainer(tmp_path, model_pair, samples, _cfg(nan_policy="skip", max_steps=3))
    params = trainer.backend.params
    snaps = []
    original = Trainer.train_step

    def train_step(self, data_step):
        before = [p.detach().clone() for p in params]
        row = original(self, data_step)
        snaps.append(all(torch.equal(b, p) for b, p in zip(before, params)))
        return row

    monkeypatch.setattr(Trainer, "train_step", train_step)
    summary = trainer.run()
    assert snaps == [False, True, False]
    assert summary.skipped_steps == 1
    rows = read_jsonl(tmp_path / "log.jsonl")
    assert rows[1].get("nonfinite") and not rows[0].get("nonfinite") and not rows[2].get("nonfinite")


def test_checkpoints_keep_last_and_incomplete_ones_are_ignored(tmp_path, model_pair, samples):
    summary = train_phase("sft", model_pair[0], samples, DATA, _cfg(max_steps=5, checkpoint_every=2, keep_last=2),
                          tmp_path / "work", tmp_path / "out", tmp_path / "log.jsonl")
    assert summary.steps == 5
    assert [s for s, _ in complete_checkpoints(tmp_path / "work")] == [4, 5]
    # a newer, half-written checkpoint (no marker) and a leftover temporary directory
    (tmp_path / "work" / "step-9" / "state").mkdir(parents=True)
    (tmp_path / "work" / ".step-7.tmp").mkdir()
    assert latest_checkpoint(tmp_path / "work").name == "step-5"
    # a complete export is reused: nothing trains, the summary comes from the log
    again = train_phase("sft", model_pair[0], samples, DATA, _cfg(max_steps=5), tmp_path / "work",
                        tmp_path / "out", tmp_path / "log.jsonl")
    assert again.reused_export and again.steps == 5 and again.final_loss == summary.final_loss


def test_resume_picks_the_older_complete_checkpoint_and_truncates_the_log(tmp_path, model_pair, samples):
    cfg = _cfg(max_steps=4, checkpoint_every=2)
    full = tmp_path / "full"
    train_phase("sft", model_pair[0], samples, DATA, cfg, full / "work", full / "out", full / "log.jsonl")
    part = tmp_path / "part"
    train_phase("sft", model_pair[0], samples, DATA, _cfg(max_steps=4, checkpoint_every=2),
                part / "work", part / "out", part / "log.jsonl")
    # pretend the run died during step 4's save, after logging steps 3 and 4: drop the export and the last
    # checkpoint's marker
    import shutil

    shutil.rmtree(part / "out")
    (part / "work" / "step-4" / "COMPLETE.json").unlink()
    with open(part / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # rows beyond the checkpoint, a torn line
    summary = train_phase("sft", model_pair[0], samples, DATA, cfg, part / "work", part / "out", part / "log.jsonl")
    assert summary.resumed_from == 2
    a, b = read_jsonl(full / "log.jsonl"), read_jsonl(part / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise: same process, same threads


def test_keep_last_one_survives_a_crash_during_save(tmp_path, model_pair, samples):
    """keep_last=1 is safe: the old checkpoint is deleted only after the new one is complete."""
    mgr = CheckpointManager(tmp_path, keep_last=1, dist=DistContext(0, 1, 0, torch.device("cpu")))

    class Backend:
        def __init__(self, fail):
            self.fail = fail

        def save(self, path):
            path.mkdir(parents=True)
            (path / "blob").write_text("x")
            if self.fail:
                raise RuntimeError("killed mid-save")

    mgr.save(1, Backend(False), {"step": 1}, {})
    mgr.save(2, Backend(False), {"step": 2}, {})
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2]
    with pytest.raises(RuntimeError):
        mgr.save(3, Backend(True), {"step": 3}, {})
    assert latest_checkpoint(tmp_path).name == "step-2"
    mgr.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]


def test_schedule_and_config_validation():
    s = LRSchedule.from_config(TrainConfig(lr=1.0, warmup_ratio=0.25, schedule="cosine", min_lr_ratio=0.1), 8)
    lrs = [s(i) for i in range(1, 9)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 0.1
    lin = LRSchedule.from_config(TrainConfig(lr=1.0, warmup_ratio=0.0, schedule="linear"), 4)
    assert [lin(i) for i in range(1, 5)] == [1.0, 0.75, 0.5, 0.25]
    for bad, match in [(dict(lr=0), "lr"), (dict(keep_last=0), "keep_last"), (dict(zero_stage=1), "zero_stage"),
                       (dict(offload_optimizer=True), "offload_optimizer"), (dict(betas=(0.9, 1.0)), "betas"),
                       (dict(warmup_ratio=1.0), "warmup_ratio"), (dict(max_steps=0), "max_steps")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    assert TrainConfig(max_steps=7).total_steps(100) == 7
    assert TrainConfig(epochs=1.5).total_steps(10) == 15


def test_log_rows_are_json_with_step_and_loss(tmp_path, model_pair, samples):
    train_phase("sft", model_pair[0], samples, DATA, _cfg(max_steps=2, tensorboard=True), tmp_path / "work",
                tmp_path / "out", tmp_path / "log.jsonl")
    assert list((tmp_path / "work" / "tensorboard").glob("events.out.tfevents.*"))
    for i, line in enumerate((tmp_path / "log.jsonl").read_text().splitlines(), 1):
        row = json.loads(line)
        assert row["step"] == i and isinstance(row["step"], int) and isinstance(row["loss"], float)
        for key in ("lr", "grad_norm", "entropy", "margin", "tokens_per_s", "label_tokens", "samples"):
            assert key in row


def test_extract_submodel_from_a_dcp_checkpoint(tmp_path, model_pair, samples):
    from safetensors.torch import load_file

    from wdl.train import extract_submodel

    strong, weak = model_pair
    train_phase("joint", strong, samples, DATA, _cfg(max_steps=2, freeze_weak=True), tmp_path / "work",
                tmp_path / "out", tmp_path / "log.jsonl", weak_model=weak)
    got = load_file(extract_submodel(tmp_path / "work", tmp_path / "strong") / "model.safetensors")
    want = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    frozen = load_file(extract_submodel(tmp_path / "work" / "step-2", tmp_path / "weak", which="weak")
                       / "model.safetensors")
    source = load_file(weak / "model.safetensors")
    assert all(torch.equal(frozen[k], source[k]) for k in source)
    with pytest.raises(ValueError, match="no complete training checkpoint"):
        extract_submodel(tmp_path, tmp_path / "x")
