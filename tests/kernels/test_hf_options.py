"""Kernel options through apply_fused_loss / MixedCausalLM: passed to the kernel as given, combined with the model's
own logit transform (softcap, logit scale), and contradictions refused."""

from __future__ import annotations

import pytest
import torch

import wdl_kernels.hf.loss as hf_loss
from tests.kernels.hf_common import batch, tiny_model
from wdl_kernels.hf import MixedCausalLM, apply_fused_loss

OPTIONS = dict(impl="torch", z_loss=1e-3, label_smoothing=0.1, temperature=2.0)


@pytest.fixture
def kernel_kwargs(monkeypatch):
    seen = []
    monkeypatch.setattr(hf_loss, "mixed_linear_cross_entropy", lambda *a, **k: seen.append(k) or _stop())
    return seen


class _Stop(Exception):
    pass


def _stop():
    raise _Stop


def _call(model, **kw):
    ids, labels = batch()
    with pytest.raises(_Stop):
        model(input_ids=ids, labels=labels, **kw)


def test_options_reach_the_kernel(kernel_kwargs):
    _call(apply_fused_loss(tiny_model(True), **OPTIONS))
    _call(apply_fused_loss(tiny_model(True), ignore_index=-1, stats=False, **OPTIONS), num_items_in_batch=7)
    _call(MixedCausalLM(tiny_model(True), tiny_model(False, seed=1), lam=0.3, **OPTIONS))
    single, summed, mixed = kernel_kwargs
    assert single == dict(OPTIONS, lam=1.0, ignore_index=-100, reduction="mean", return_stats=True)
    assert summed == dict(OPTIONS, lam=1.0, ignore_index=-1, reduction="sum", return_stats=False)
    assert mixed == dict(OPTIONS, lam=0.3, ignore_index=-100, reduction="mean", return_stats=True)


def test_the_models_logit_transform_is_applied(kernel_kwargs):
    capped = tiny_model(True)
    capped.config.final_logit_softcapping = 30.0  # as Gemma 2 / 3 configs carry it
    _call(apply_fused_loss(capped, impl="torch"))
    scaled = tiny_model(True)
    scaled.config.logit_scale = 0.25  # Cohere multiplies its logits by it
    _call(apply_fused_loss(scaled, impl="torch", temperature=2.0))
    granite = tiny_model(True)
    granite.config.logits_scaling = 4.0  # Granite divides by it
    _call(apply_fused_loss(granite, impl="torch"))
    assert kernel_kwargs[0]["softcap"] == 30.0 and "temperature" not in kernel_kwargs[0]
    assert kernel_kwargs[1]["temperature"] == pytest.approx(8.0)  # z = 0.25 * raw / 2
    assert kernel_kwargs[2]["temperature"] == pytest.approx(4.0)


def test_contradicting_or_reserved_options_are_errors():
    capped = tiny_model(True)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="already caps its logits"):
        apply_fused_loss(capped, softcap=10.0)
    for key in ("reduction", "num_items", "return_stats", "lam", "bias"):
        with pytest.raises(ValueError, match="set by wdl_kernels.hf itself"):
            apply_fused_loss(tiny_model(True), **{key: None})
    with pytest.raises(ValueError, match="set by wdl_kernels.hf itself"):
        MixedCausalLM(tiny_model(True), tiny_model(True, seed=1), reduction="sum")
    with pytest.raises(ValueError, match="mixing such models is not supported"):
        MixedCausalLM(capped, tiny_model(True, seed=1))


def test_the_kernels_own_validation_reaches_the_user():
    ids, labels = batch()
    labels[0, 7] = 10_000  # outside the vocabulary
    with pytest.raises(ValueError, match="outside"):
        apply_fused_loss(tiny_model(True), impl="torch")(input_ids=ids, labels=labels)
    with pytest.raises(ValueError, match="impl must be one of"):
        apply_fused_loss(tiny_model(True), impl="cuda")(input_ids=ids, labels=torch.zeros_like(ids))
