"""wdl_kernels.hf.apply_fused_loss: the patched forward equals the model's own loss, gradients and outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wdl_kernels
from tests.kernels.hf_common import V, batch, grads, tiny_model
from wdl_kernels.hf import FusedCausalLMOutput, apply_fused_loss, lm_head_weight


def padded_batch(seed=0):
    ids, labels = batch(seed, b=3, t=19)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # right padding, no loss there
    labels[1, 14:] = -100
    return ids, labels, mask


@pytest.mark.parametrize("tied", [True, False])
def test_loss_and_grads_equal_the_models_own(tied):
    ids, labels, mask = padded_batch()
    model = tiny_model(tied)
    ref = model(input_ids=ids, attention_mask=mask, labels=labels)
    ref.loss.backward()
    want = grads(model)
    model.zero_grad()
    assert apply_fused_loss(model, impl="torch") is model
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert isinstance(out, FusedCausalLMOutput) and out.logits is None  # no [B, T, V] tensor
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    got = grads(model)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    if tied:
        assert lm_head_weight(model) is model.get_input_embeddings().weight


def test_num_items_in_batch_shift_labels_and_ignore_index():
    ids, labels, mask = padded_batch(1)
    stock, model = tiny_model(False), apply_fused_loss(tiny_model(False), impl="torch")
    for kwargs in ({"num_items_in_batch": 37}, {"num_items_in_batch": torch.tensor(11)}):
        want = stock(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss, want)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    shifted[0, 3] = -100  # not derivable from `labels`: the pre-shifted targets must be used as given
    want = stock(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shifted).loss
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, shift_labels=shifted).loss, want)
    other = torch.where(labels == -100, torch.full_like(labels, -1), labels)
    want = stock(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(apply_fused_loss(tiny_model(False), impl="torch", ignore_index=-1)(
        input_ids=ids, attention_mask=mask, labels=other).loss, want)


def test_token_stats_are_those_of_the_logits():
    ids, labels, mask = padded_batch(2)
    model = tiny_model(True)
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=mask).logits.double()
        apply_fused_loss(model, impl="torch")
        stats = model(input_ids=ids, attention_mask=mask, labels=labels).token_stats
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    valid = targets != -100
    logp = torch.log_softmax(z, -1)
    zy = z.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    want = {
        "lse": torch.logsumexp(z, -1),
        "entropy": -(logp.exp() * logp).sum(-1),
        "max_prob": logp.exp().amax(-1),
        "nll": torch.where(valid, -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1), 0.0),
        "margin": torch.where(valid, zy - (z.sum(-1) - zy) / (V - 1), 0.0),
        "valid": valid.double(),
    }
    want["accuracy"] = (valid & (z.argmax(-1) == targets)).double()  # argmax == target, 0 at ignored positions
    for name, value in want.items():
        assert stats[name].shape == ids.shape and stats[name].dtype == torch.float32, name
        torch.testing.assert_close(stats[name].double(), value, rtol=1e-5, atol=2e-6, msg=name)


def test_without_labels_the_forward_is_the_stock_one():
    ids, _, mask = padded_batch(3)
    stock, model = tiny_model(True), apply_fused_loss(tiny_model(True), impl="torch")
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                               stock(input_ids=ids, attention_mask=mask).logits)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids[:1, :6], **kw), stock.generate(ids[:1, :6], **kw))


def test_a_deepcopy_is_a_patched_model_of_its_own():
    import copy

    ids, labels, mask = padded_batch(7)
    model = apply_fused_loss(tiny_model(True), impl="torch")
    twin = copy.deepcopy(model)  # as TRL builds reference models
    with torch.no_grad():
        twin.model.norm.weight.mul_(3.0)
    stock_twin = tiny_model(True)
    stock_twin.load_state_dict(twin.state_dict())
    torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask).logits,
                               stock_twin(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask, labels=labels).loss,
                               stock_twin(input_ids=ids, attention_mask=mask, labels=labels).loss, rtol=1e-5, atol=1e-6)


def test_logits_on_request_and_tuple_outputs():
    ids, labels, mask = padded_batch(4)
    stock = tiny_model(False)
    ref = stock(input_ids=ids, attention_mask=mask, labels=labels)
    model = apply_fused_loss(tiny_model(False), impl="torch")
    out = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=True)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    apply_fused_loss(model, impl="torch", return_logits=True, stats=False)  # again: new options, same patch
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is not None and out.token_stats is None
    loss, *_ = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-6)


class Wrapper(nn.Module):
    """Stands in for DDP / a DeepSpeed engine: holds `.module` and forwards calls to it."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_calls_go_through_wrappers_and_the_models_hooks():
    ids, labels, _ = padded_batch(5)
    model = tiny_model(True)
    wrapped = apply_fused_loss(Wrapper(model), impl="torch")  # the HF model inside is patched
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(sorted(kwargs)) or None, with_kwargs=True)
    loss = wrapped(input_ids=ids, labels=labels).loss
    assert seen == [["input_ids", "labels"]]
    torch.testing.assert_close(loss, tiny_model(True)(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-6)


def test_trl_fused_head_protocol():
    """TRL >= 1.16 calls model(..., labels=, fused_lm_head=True) and reads log_probs (with grad), entropy,
    is_top1 and label_mask of shape [B, T - 1]."""
    ids, labels, mask = padded_batch(6)
    stock = tiny_model(True)
    z = stock(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    model = apply_fused_loss(tiny_model(True), impl="torch")
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    targets = labels[:, 1:]
    valid = targets != -100
    logp = torch.log_softmax(z, -1)
    want = torch.where(valid, logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1), 0.0)
    assert out.log_probs.shape == targets.shape and out.log_probs.requires_grad
    torch.testing.assert_close(out.log_probs.double(), want, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(out.entropy.double(), torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0),
                               rtol=1e-5, atol=2e-6)
    assert torch.equal(out.label_mask, valid)
    torch.testing.assert_close(out.loss.double(), -want.sum() / valid.sum(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.is_top1, valid & (z.argmax(-1) == targets))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wdl_kernels_hf_is_a_lazy_attribute():
    import subprocess
    import sys

    code = """if True:
        import sys, wdl_kernels
        assert 'transformers' not in sys.modules
        sys.modules['transformers'] = None  # as after `pip install ./kernels` alone
        try:
            wdl_kernels.hf
            raise AssertionError('imported without transformers')
        except ImportError as e:
            assert "wdl_kernels.hf needs transformers: pip install" in str(e), e
        del sys.modules['transformers']
        assert callable(wdl_kernels.hf.apply_fused_loss) and 'transformers' in sys.modules
    """
    subprocess.run([sys.executable, "-c", code], check=True)
    assert wdl_kernels.hf.apply_fused_loss is apply_fused_loss


class CustomHead(nn.Linear):
    def forward(self, x):  # e.g. a quantized layer: reading .weight would skip this
        return super().forward(x) * 2


def test_unsupported_models_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="no output embeddings"):
        lm_head_weight(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not a Hugging Face PreTrainedModel"):
        apply_fused_loss(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="set by wdl_kernels.hf itself"):
        apply_fused_loss(tiny_model(True), reduction="sum")
    model = tiny_model(False)
    model.lm_head = CustomHead(64, V, bias=False)
    with pytest.raises(ValueError, match="not a plain nn.Linear"):
        apply_fused_loss(model)
    moe = tiny_model(True)
    moe.config.output_router_logits = True
    with pytest.raises(ValueError, match="router load-balancing loss"):
        apply_fused_loss(moe)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # a Trainer earlier in this process fixed another mixed precision
    try:
        prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(tiny_model(True))
    finally:
        AcceleratorState._reset_state(True)  # as transformers' own tests and Trainer do
    with pytest.raises(ValueError, match="already wrapped by accelerate"):
        apply_fused_loss(prepared)
    ids, labels, _ = padded_batch()
    with pytest.raises(ValueError, match="needs labels"):
        apply_fused_loss(tiny_model(True))(input_ids=ids, fused_lm_head=True)
