"""Kernel options through apply_fused_loss / MixedCausalLM: passed to the kernel as given, combined with the model's
own logit transform (softcap, logit scale), and contradictions refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wdl_kernels.hf.loss as hf_loss
from tests.kernels.hf_common import batch, grads, tiny_model
from wdl_kernels.hf import MixedCausalLM, apply_fused_loss, decoder_hidden_states
from wdl_kernels.reference import mixed_logits_reference, reference_loss_and_stats

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


LOSS_OPTIONS = dict(z_loss=1e-2, label_smoothing=0.1, temperature=1.5, softcap=2.0)


def _scaled(model, seed):
    """lm_head with a bias, and logits of a few units, so that the softcap and temperature matter."""
    head = nn.Linear(64, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 30.0)
        head.bias.copy_(torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(seed)))
    model.lm_head = head
    return model


@pytest.mark.parametrize("mode", ["lean", "fast"])
@pytest.mark.parametrize("mixed", [False, True])
def test_options_equal_the_float64_reference(mode, mixed):
    """Loss, every parameter's gradient (lm_head biases included) and the token stats of a patched model (or
    MixedCausalLM) with loss options, against wdl_kernels.reference on the same hidden states (autograd through
    float64)."""
    ids, labels = batch(9)
    ref_models = [_scaled(tiny_model(False, seed=s), s) for s in ((0, 1) if mixed else (0,))]
    hidden = [decoder_hidden_states(m, input_ids=ids).reshape(-1, 64).double() for m in ref_models]
    heads = [m.lm_head.weight.double() for m in ref_models]
    biases = dict(bias=ref_models[0].lm_head.bias.double(),
                  weak_bias=ref_models[1].lm_head.bias.double() if mixed else None)
    weak = (hidden[1], heads[1]) if mixed else (None, None)
    with torch.no_grad():  # every third target the argmax, so that the accuracy has ones and zeros
        z = mixed_logits_reference(hidden[0], heads[0], *weak, 0.3, temperature=1.5, softcap=2.0, **biases)
        top = z.argmax(-1).view(ids.shape)
        labels[:, 1::3] = top[:, :-1][:, ::3]
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
    loss_ref, stats_ref = reference_loss_and_stats(hidden[0], heads[0], targets, *weak, lam=0.3, num_items=23,
                                                   **LOSS_OPTIONS, **biases)
    loss_ref.backward()
    models = [_scaled(tiny_model(False, seed=s), s) for s in ((0, 1) if mixed else (0,))]
    model = (MixedCausalLM(*models, lam=0.3, impl="torch", mode=mode, **LOSS_OPTIONS) if mixed
             else apply_fused_loss(models[0], impl="torch", mode=mode, **LOSS_OPTIONS))
    out = model(input_ids=ids, labels=labels, num_items_in_batch=23)
    out.loss.backward()
    torch.testing.assert_close(out.loss.double(), loss_ref, rtol=1e-5, atol=1e-6)
    for ref, got in zip(ref_models, models):
        want, have = grads(ref), grads(got)
        assert want.keys() == have.keys() and "lm_head.bias" in have
        for name, g in have.items():
            torch.testing.assert_close(g.double(), want[name].double(), rtol=1e-4, atol=1e-6, msg=name)
    for name in ("entropy", "nll", "margin", "max_prob", "accuracy"):
        torch.testing.assert_close(out.token_stats[name].reshape(-1).double(), getattr(stats_ref, name),
                                   rtol=1e-5, atol=2e-6, msg=name)
    assert 0 < float(stats_ref.accuracy.sum()) < float((targets != -100).sum())


def test_options_reach_the_kernel(kernel_kwargs):
    _call(apply_fused_loss(tiny_model(True), **OPTIONS))
    _call(apply_fused_loss(tiny_model(True), ignore_index=-1, stats=False, **OPTIONS), num_items_in_batch=7)
    _call(MixedCausalLM(tiny_model(True), tiny_model(False, seed=1), lam=0.3, **OPTIONS))
    single, summed, mixed = kernel_kwargs
    base = dict(OPTIONS, reduction="mean", num_items=None, return_stats=True)
    assert single == dict(base, lam=1.0, ignore_index=-100)
    assert summed == dict(base, lam=1.0, ignore_index=-1, reduction="sum", num_items=7, return_stats=False)
    assert mixed == dict(base, lam=0.3, ignore_index=-100)


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


FAMILIES = {  # what each family's forward does after lm_head, made large enough to matter in a tiny model
    "Gemma2": dict(final_logit_softcapping=0.5, head_dim=32),  # cap * tanh(z / cap)
    "Cohere": dict(logit_scale=0.25),  # z * logit_scale
    "Granite": dict(logits_scaling=4.0),  # z / logits_scaling
    "Phi": dict(),  # lm_head with a bias
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_families_equal_their_own_loss(family):
    import transformers

    config = getattr(transformers, f"{family}Config")(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=None, **FAMILIES[family])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # logits of a few units, so that a softcap or scale changes the loss
        model.get_output_embeddings().weight.mul_(30.0)
        if model.lm_head.bias is not None:
            model.lm_head.bias.normal_()
    ids, labels = batch(8)
    ref = model(input_ids=ids, labels=labels)
    ref.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():  # the transform matters: the plain CE of lm_head's output is another loss
        raw = model.lm_head(model.model(input_ids=ids).last_hidden_state)
        plain = torch.nn.functional.cross_entropy(raw[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1))
    if family == "Phi":
        assert model.lm_head.bias is not None
    else:
        assert abs(float(plain) - float(ref.loss.detach())) > 1e-2
    apply_fused_loss(model, impl="torch")
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)
    logits = model(input_ids=ids, labels=labels, return_logits=True).logits
    torch.testing.assert_close(logits, ref.logits)
