"""wdl_kernels.hf: the fused loss on Hugging Face causal LMs equals the model's own loss, through wrappers too."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from wdl.tiny import tiny_qwen3_config
from wdl_kernels.hf import compute_loss, fused_causal_lm_loss, lm_head_weight, shift_labels

V = 300


def tiny_model(tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_qwen3_config(V, tie_word_embeddings=tied, hidden_size=64,
                                                              intermediate_size=128)).float()


def batch(seed=0, b=2, t=17):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens
    return ids, labels, torch.ones_like(ids)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
def test_equals_hf_loss_and_grads(tied):
    ids, labels, mask = batch()
    model = tiny_model(tied)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    want = grads(model)
    ref_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    model.zero_grad()
    out = fused_causal_lm_loss(model, ids, labels, attention_mask=mask, impl="torch")
    out.loss.backward()
    got = grads(model)
    torch.testing.assert_close(out.loss, ref_loss.float(), rtol=1e-5, atol=1e-6)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    if tied:
        assert lm_head_weight(model) is model.get_input_embeddings().weight


def test_weak_model_mixing_matches_materialized_logits():
    ids, labels, mask = batch(1)
    strong, weak = tiny_model(True, 0), tiny_model(False, 1)
    lam = 0.3
    z = lam * strong(input_ids=ids).logits + (1 - lam) * weak(input_ids=ids).logits
    want = nn.functional.cross_entropy(z[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    want.backward()
    g_strong, g_weak = grads(strong), grads(weak)
    strong.zero_grad(), weak.zero_grad()
    out = fused_causal_lm_loss(strong, ids, labels, weak_model=weak, lam=lam, impl="torch")
    out.loss.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    for ref, model in ((g_strong, strong), (g_weak, weak)):
        for name, g in grads(model).items():
            torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_frozen_weak_model_gets_no_grads():
    ids, labels, _ = batch(2)
    strong, weak = tiny_model(True, 0), tiny_model(True, 1).requires_grad_(False)
    fused_causal_lm_loss(strong, ids, labels, weak_model=weak, impl="torch").loss.backward()
    assert all(p.grad is None for p in weak.parameters())
    assert all(p.grad is not None for p in strong.parameters())


class Wrapper(nn.Module):
    """Stands in for DDP / a DeepSpeed engine: holds `.module` and forwards calls to it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_calls_go_through_wrappers_and_model_hooks():
    ids, labels, _ = batch(3)
    model = tiny_model(True)
    plain = fused_causal_lm_loss(model, ids, labels, impl="torch").loss
    wrapped = Wrapper(model)
    seen = []
    handle = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(mod) or None, with_kwargs=True)
    loss = fused_causal_lm_loss(wrapped, ids, labels, impl="torch").loss
    handle.remove()
    assert wrapped.calls == 1 and seen == [model]
    assert torch.equal(loss, plain)
    assert "forward" not in model.__dict__  # the swap is undone
    logits = model(input_ids=ids).logits  # and the model still works normally
    assert logits.shape == (*ids.shape, V)


def test_num_items_in_batch_and_compute_loss():
    ids, labels, mask = batch(4)
    model = tiny_model(False)
    n_items = int((shift_labels(labels) != -100).sum())
    total = fused_causal_lm_loss(model, ids, labels, reduction="sum", impl="torch").loss
    loss = compute_loss(model, {"input_ids": ids, "labels": labels, "attention_mask": mask},
                        num_items_in_batch=n_items * 2, impl="torch")
    torch.testing.assert_close(loss, total / (2 * n_items))
    loss2, outputs = compute_loss(model, {"input_ids": ids, "labels": labels}, return_outputs=True, impl="torch")
    assert outputs["stats"].entropy.shape == (ids.numel(),)


def test_already_shifted_labels():
    ids, labels, _ = batch(5)
    model = tiny_model(True)
    a = fused_causal_lm_loss(model, ids, labels, impl="torch").loss
    b = fused_causal_lm_loss(model, ids, shift_labels(labels), labels_shifted=True, impl="torch").loss
    assert torch.equal(a, b)


def test_missing_labels_and_non_lm_are_clear_errors():
    ids, _, _ = batch()
    with pytest.raises(ValueError, match="labels are required"):
        fused_causal_lm_loss(tiny_model(True), ids, None)
    with pytest.raises(ValueError, match="no output embeddings"):
        lm_head_weight(nn.Linear(3, 3))
