"""MixedCausalLM: its loss is wdl's own joint step (wdl.models.JointModel) on the same batch, stock Trainer trains it
like wdl's loop would, saves the strong model as a plain HF checkpoint, and evaluates/predicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Trainer

from tests.kernels.hf_common import V, collate, grads, params, rows, tiny_model, train_logs, training_args
from wdl.models import FusedMixedCrossEntropy, JointModel
from wdl_kernels.hf import MixedCausalLM, token_metrics

LAM = 0.3


def pair():
    return tiny_model(True, seed=0), tiny_model(False, seed=1)


def test_loss_and_grads_equal_the_wdl_joint_step():
    batch = collate(rows(4, seed=5))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    joint = JointModel(*pair(), lam=LAM, loss=FusedMixedCrossEntropy(impl="torch"))
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    out = joint(ids, shifted)
    (out.loss / (shifted != -100).sum()).backward()  # wdl normalises the summed loss by the label-token count
    mixed = MixedCausalLM(*pair(), lam=LAM, impl="torch")
    got = mixed(input_ids=ids, attention_mask=mask, labels=labels)
    got.loss.backward()
    torch.testing.assert_close(got.loss, out.loss / (shifted != -100).sum(), rtol=1e-5, atol=1e-6)
    for sub in ("strong", "weak"):
        want, have = grads(getattr(joint, sub)), grads(getattr(mixed, sub))
        assert want.keys() == have.keys() and want
        for name in want:
            torch.testing.assert_close(have[name], want[name], rtol=1e-4, atol=1e-6, msg=f"{sub}.{name}")
    valid = shifted != -100
    for name in ("entropy", "margin", "nll"):  # the stats of the mixed distribution, as JointModel reports them
        want = getattr(out.stats, name).view(ids.shape)
        torch.testing.assert_close(got.token_stats[name][valid], want[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen,bf16,checkpointing", [(False, False, False), (True, False, True),
                                                       (False, True, False)])
def test_stock_trainer_equals_wdl_joint_steps(frozen, bf16, checkpointing, tmp_path):
    """Two optimizer steps, each one epoch of 4 samples (2 micro-batches): the gradient is order-independent."""
    data = rows(4, seed=6)
    mixed = MixedCausalLM(*pair(), lam=LAM, freeze_weak=frozen, impl="torch")
    args = training_args(num_train_epochs=2, max_steps=-1, output_dir=str(tmp_path), bf16=bf16,
                         gradient_checkpointing=checkpointing)
    trainer = Trainer(model=mixed, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    logs = train_logs(trainer)
    # activation checkpointing reaches the trained sub-models only (a frozen weak model keeps no activations)
    assert all(layer.gradient_checkpointing == checkpointing for layer in mixed.strong.model.layers)
    if frozen:
        assert not any(layer.gradient_checkpointing for layer in mixed.weak.model.layers)
    # the wdl joint step by hand: summed loss / label tokens, clip to 1.0, SGD lr 0.1
    joint = JointModel(*pair(), lam=LAM, freeze_weak=frozen, loss=FusedMixedCrossEntropy(impl="torch"))
    batch = collate(data)
    shifted = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    trainable = [p for p in joint.parameters() if p.requires_grad]
    for step in range(2):
        joint.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what wdl's loop does for bf16
            loss = joint(batch["input_ids"], shifted).loss / (shifted != -100).sum()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        with torch.no_grad():
            for p in trainable:
                p -= 0.1 * p.grad
        # bf16: one padded batch here, two micro-batches there: the bf16 decoder rounds differently
        rel = 2e-3 if bf16 else 1e-5
        assert len(logs) == 2 and logs[step]["loss"] == pytest.approx(float(loss.detach()), rel=rel)
        assert logs[step]["grad_norm"] == pytest.approx(float(norm), rel=10 * rel)
    want, have = params(joint), params(mixed)
    assert want.keys() == have.keys()
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=rel, atol=rel / 10, msg=name)
    assert torch.equal(mixed.weak.model.norm.weight, pair()[1].model.norm.weight) == frozen
    # Trainer's save path: the strong model as a plain HF checkpoint (a trained weak model beside it)
    trainer.save_model(str(tmp_path / "out"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, value in mixed.strong.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert (tmp_path / "out" / "weak" / "config.json").exists() != frozen
    if not frozen:
        weak = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "weak")
        assert all(torch.equal(weak.state_dict()[k], v) for k, v in mixed.weak.state_dict().items())


def test_resume_from_a_trainer_checkpoint(tmp_path):
    """Trainer's resume_from_checkpoint loads the strong model from checkpoint-N (a plain HF checkpoint); the
    weak model comes from checkpoint-N/weak, as the README says: the resumed run ends where the straight one did."""
    def trainer(model, out, **kw):
        args = training_args(max_steps=2, output_dir=str(out), **kw)
        return Trainer(model=model, args=args, train_dataset=rows(8, seed=8), data_collator=collate)

    straight = MixedCausalLM(*pair(), lam=LAM, impl="torch")
    trainer(straight, tmp_path / "a", save_strategy="steps", save_steps=1).train()
    checkpoint = tmp_path / "a" / "checkpoint-1"
    weak = AutoModelForCausalLM.from_pretrained(checkpoint / "weak")
    resumed = MixedCausalLM(pair()[0], weak, lam=LAM, impl="torch")  # a fresh strong model: the checkpoint's wins
    trainer(resumed, tmp_path / "b").train(resume_from_checkpoint=str(checkpoint))
    want, have = params(straight), params(resumed)
    moved = max(float((want[k] - v).abs().max()) for k, v in params(MixedCausalLM(*pair(), lam=LAM)).items())
    assert moved > 1e-3
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-6, atol=1e-7, msg=name)


def test_evaluate_and_predict():
    data = rows(5, seed=7)
    mixed = MixedCausalLM(*pair(), lam=LAM, impl="torch")
    trainer = Trainer(model=mixed, args=training_args(per_device_eval_batch_size=2), eval_dataset=data,
                      data_collator=collate, compute_metrics=token_metrics)
    metrics = trainer.evaluate()
    pred = trainer.predict(data)
    strong, weak = pair()
    nll, n = 0.0, 0
    for sample in data:
        ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor(sample["labels"])
        with torch.no_grad():
            z = LAM * strong(input_ids=ids).logits[0, :-1] + (1 - LAM) * weak(input_ids=ids).logits[0, :-1]
        nll += float(F.cross_entropy(z.double(), labels[1:], ignore_index=-100, reduction="sum"))
        n += int((labels[1:] != -100).sum())
    assert metrics["eval_nll"] == pytest.approx(nll / n, rel=1e-5)
    assert pred.metrics["test_nll"] == pytest.approx(nll / n, rel=1e-5)
    assert int((pred.predictions["valid"] == 1).sum()) == n
    # without labels: the mixed logits
    ids = torch.tensor([data[0]["input_ids"]])
    z = mixed(input_ids=ids).logits
    torch.testing.assert_close(z, LAM * strong(input_ids=ids).logits + (1 - LAM) * weak(input_ids=ids).logits)


def test_frozen_weak_model_stays_fixed_and_bad_pairs_are_errors():
    strong, weak = pair()
    mixed = MixedCausalLM(strong, weak, lam=LAM, freeze_weak=True, impl="torch").train()
    assert mixed.strong.training and not mixed.weak.training
    ids, labels = torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 9))
    mixed(input_ids=ids, labels=labels).loss.backward()
    assert all(p.grad is None for p in weak.parameters()) and all(p.grad is not None for p in strong.parameters())
    with pytest.raises(ValueError, match="same vocabulary"):
        MixedCausalLM(tiny_model(True), tiny_model(True, vocab=V + 1))
    with pytest.raises(ValueError, match="two distinct models"):
        MixedCausalLM(strong, strong)
    with pytest.raises(ValueError, match=r"lam must be a float in \[0, 1\]"):
        MixedCausalLM(strong, weak, lam=1.5)
    with pytest.raises(ValueError, match="causal LM"):
        MixedCausalLM(strong, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="built from two loaded models"):
        MixedCausalLM.from_pretrained("x")
