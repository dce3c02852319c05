"""peft on a patched model: LoRA on the lm_head is exact (the adapter is a second kernel head); what is not
supported (DoRA, other tuners on lm_head, LoRA lm_heads inside MixedCausalLM) is a ValueError."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model

from tests.kernels.hf_common import batch, grads, tiny_model
from wdl_kernels.hf import MixedCausalLM, apply_fused_loss


def lora(model, **kw):
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False,
               lora_dropout=0.0)
    cfg.update(kw)
    return get_peft_model(model, LoraConfig(**cfg))


def run(model, ids, labels, seed=3):
    torch.manual_seed(seed)  # same dropout masks for both runs
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    return out.loss.detach(), grads(model)


def assert_same(a, b):
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys() and any("lm_head.lora_B" in k for k in a[1])
    for name in a[1]:
        torch.testing.assert_close(b[1][name], a[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("patch_first", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lora_on_lm_head_is_exact(patch_first, dropout):
    ids, labels = batch(1)
    stock = lora(tiny_model(False), lora_dropout=dropout).train()
    if patch_first:
        fused = lora(apply_fused_loss(tiny_model(False), impl="torch"), lora_dropout=dropout).train()
    else:
        fused = apply_fused_loss(lora(tiny_model(False), lora_dropout=dropout), impl="torch").train()
    fused.load_state_dict(stock.state_dict())
    want, got = run(stock, ids, labels), run(fused, ids, labels)
    assert_same(want, got)
    # and the adapter matters: without it the loss differs (what a kernel reading lm_head.weight would give)
    with fused.disable_adapter():
        plain = fused(input_ids=ids, labels=labels).loss
        with stock.disable_adapter():
            torch.testing.assert_close(plain, stock(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-6)
    assert abs(float(plain) - float(want[0])) > 1e-3


def test_lora_on_an_lm_head_with_bias():
    """The base head's bias stays exact beside the adapter's second kernel head."""
    ids, labels = batch(5)

    def biased(seed):
        model = tiny_model(False)
        model.lm_head = torch.nn.Linear(64, model.config.vocab_size, bias=True)
        with torch.no_grad():
            model.lm_head.bias.copy_(torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(7)))
        return lora(model, lora_dropout=0.2, bias="all").train()  # bias="all": the head's bias trains too

    stock, fused = biased(0), apply_fused_loss(biased(0), impl="torch")
    fused.load_state_dict(stock.state_dict())
    want, got = run(stock, ids, labels), run(fused, ids, labels)
    assert_same(want, got)
    assert any(k.endswith("lm_head.base_layer.bias") for k in got[1])


def test_two_active_lora_adapters_and_modules_to_save():
    ids, labels = batch(2)

    def two(model):
        model = lora(model)
        model.add_adapter("other", LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False))
        model.base_model.set_adapter(["default", "other"])
        return model

    stock = two(tiny_model(False))
    fused = apply_fused_loss(two(tiny_model(False)), impl="torch")
    fused.load_state_dict(stock.state_dict())
    assert_same(run(stock, ids, labels), run(fused, ids, labels))

    def saved(model):
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
        with torch.no_grad():
            model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
        return model

    stock, fused = saved(tiny_model(False)), apply_fused_loss(saved(tiny_model(False)), impl="torch")
    want, got = run(stock, ids, labels), run(fused, ids, labels)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_unsupported_adapters_on_lm_head_are_refused():
    with pytest.raises(ValueError, match="LoRA variant"):
        apply_fused_loss(lora(tiny_model(False), use_dora=True))
    ia3 = get_peft_model(tiny_model(False), IA3Config(target_modules=["lm_head", "down_proj"],
                                                      feedforward_modules=["down_proj"]))
    with pytest.raises(ValueError, match="adapter, which the fused loss does not support"):
        apply_fused_loss(ia3)
    patched = apply_fused_loss(tiny_model(False), impl="torch")
    dora = lora(patched, use_dora=True)  # wrapped after patching: refused at the first call
    ids, labels = batch(3)
    with pytest.raises(ValueError, match="LoRA variant"):
        dora(input_ids=ids, labels=labels)
    with pytest.raises(ValueError, match="not supported inside MixedCausalLM"):
        MixedCausalLM(lora(tiny_model(False)), tiny_model(False, seed=1))


def test_mixed_causal_lm_with_lora_on_the_decoder():
    ids, labels = batch(4)
    strong = get_peft_model(tiny_model(True), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                         init_lora_weights=False))
    weak = tiny_model(False, seed=1)
    mixed = MixedCausalLM(strong, weak, lam=0.4, freeze_weak=True, impl="torch")
    loss = mixed(input_ids=ids, labels=labels).loss
    loss.backward()
    got = grads(strong)
    strong.zero_grad()
    z = 0.4 * strong(input_ids=ids).logits + 0.6 * weak(input_ids=ids).logits.detach()
    want = torch.nn.functional.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), labels[:, 1:].reshape(-1))
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert got and all("lora_" in k for k in got)  # only the adapters train
    for name, g in grads(strong).items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)
