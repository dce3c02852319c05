"""Stock transformers.Trainer on a patched model: same losses, grad norms and updates as on the stock model
(fp32 and bf16 autocast, gradient accumulation with num_items_in_batch, activation checkpointing), and
evaluate()/predict() work."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer

import wdl_kernels.hf.loss as hf_loss
from tests.kernels.hf_common import (assert_same_run, collate, params, rows, tiny_model, train_logs,
                                     training_args)
from wdl_kernels.hf import apply_fused_loss, token_metrics


def _train(model, **overrides):
    trainer = Trainer(model=model, args=training_args(**overrides), train_dataset=rows(), data_collator=collate)
    trainer.train()
    return train_logs(trainer), params(model)


@pytest.mark.parametrize("tied,bf16,checkpointing", [(True, False, False), (False, False, True), (True, True, False),
                                                     (False, True, False)])
def test_trainer_matches_stock(tied, bf16, checkpointing, monkeypatch):
    seen = []  # what reaches the kernel, and in which dtype the decoder ran
    kernel = hf_loss.mixed_linear_cross_entropy
    monkeypatch.setattr(hf_loss, "mixed_linear_cross_entropy",
                        lambda h, w, *a, **k: seen.append((h.dtype, w.dtype)) or kernel(h, w, *a, **k))
    stock_logs, stock_params = _train(tiny_model(tied), bf16=bf16)
    model = apply_fused_loss(tiny_model(tied), impl="torch")
    layer_dtypes = []
    model.model.layers[0].mlp.register_forward_hook(lambda mod, i, out: layer_dtypes.append(out.dtype))
    logs, new_params = _train(model, bf16=bf16, gradient_checkpointing=checkpointing)  # stock ran without
    assert all(layer.gradient_checkpointing == checkpointing for layer in model.model.layers)
    dtype = torch.bfloat16 if bf16 else torch.float32
    assert len(seen) == 4 and set(seen) == {(dtype, dtype)}  # 2 steps x 2 micro-batches, autocast honoured
    assert set(layer_dtypes) == {dtype}
    # bf16: stock rounds the logits to bf16 before its fp32 loss, the kernel keeps them in fp32
    tol = dict(rtol=2e-3, atol=2e-4) if bf16 else dict(rtol=1e-5, atol=1e-6)
    assert_same_run(stock_logs, logs, stock_params, new_params, **tol)
    moved = max(float((new_params[n] - tiny_model(tied).state_dict()[n]).abs().max()) for n in new_params)
    assert moved > 1e-3  # the run trained (an update of 0 would match trivially)


def test_label_smoothing_takes_the_stock_path():
    """With label_smoothing_factor, Trainer pops the labels and smooths the model's logits itself."""
    stock_logs, stock_params = _train(tiny_model(True), label_smoothing_factor=0.1)
    logs, new_params = _train(apply_fused_loss(tiny_model(True), impl="torch"), label_smoothing_factor=0.1)
    assert_same_run(stock_logs, logs, stock_params, new_params, rtol=1e-5, atol=1e-6)


def test_evaluate_and_predict_with_compute_metrics():
    model = apply_fused_loss(tiny_model(False), impl="torch")
    data = rows(7, seed=3)
    args = training_args(per_device_eval_batch_size=3)
    trainer = Trainer(model=model, args=args, eval_dataset=data, data_collator=collate, compute_metrics=token_metrics)
    metrics = trainer.evaluate()
    pred = trainer.predict(data)
    # the reference: every token of every sample, from the stock model's logits
    stock = tiny_model(False)
    nll, entropy, correct, n = 0.0, 0.0, 0, 0
    for sample in data:
        ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor([sample["labels"]])
        with torch.no_grad():
            logp = torch.log_softmax(stock(input_ids=ids).logits[0, :-1].double(), -1)
        target = labels[0, 1:]
        keep = target != -100
        nll -= float(logp[keep].gather(1, target[keep, None]).sum())
        entropy -= float((logp.exp() * logp).sum(-1)[keep].sum())
        correct += int((logp[keep].argmax(-1) == target[keep]).sum())
        n += int(keep.sum())
    assert metrics["eval_nll"] == pytest.approx(nll / n, rel=1e-5)
    assert metrics["eval_entropy"] == pytest.approx(entropy / n, rel=1e-5)
    assert pred.metrics["test_nll"] == pytest.approx(nll / n, rel=1e-5)
    stats = pred.predictions
    assert isinstance(stats, dict) and stats["entropy"].shape == (7, max(len(s["input_ids"]) for s in data))
    assert int((stats["valid"] == 1).sum()) == n
    assert metrics["eval_mean_token_accuracy"] == pytest.approx(correct / n, rel=1e-6)
    # prediction_loss_only: the loss alone, the same as the stock model's
    stock_trainer = Trainer(model=stock, args=args, eval_dataset=data, data_collator=collate)
    assert trainer.evaluate(metric_key_prefix="x")["x_loss"] == pytest.approx(stock_trainer.evaluate()["eval_loss"],
                                                                             rel=1e-5)
