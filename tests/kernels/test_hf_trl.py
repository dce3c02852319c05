"""TRL SFTTrainer (>= 1.16, which calls model(..., fused_lm_head=True)) on a patched model and on MixedCausalLM:
the wdl kernel answers TRL's fused-head calls, and losses, grad norms, TRL's entropy / mean_token_accuracy and the
updates equal stock TRL's (prompt-completion and padding-free data, fp32 and bf16)."""

from __future__ import annotations

import tempfile

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

import wdl_kernels.hf.loss as hf_loss
from tests.kernels.hf_common import assert_same_run, batch, params, tiny_model, train_logs
from wdl.tiny import build_tokenizer
from wdl_kernels.hf import MixedCausalLM, apply_fused_loss


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(vocab_size=512)


@pytest.fixture(scope="module")
def prompt_completion():
    return Dataset.from_list([{"prompt": f"What is {i} plus {i + 3}? ", "completion": f"It is {2 * i + 3}."}
                              for i in range(8)])


@pytest.fixture(scope="module")
def text():
    return Dataset.from_list([{"text": f"{i} plus {i + 3} is {2 * i + 3}" + " and more" * (i % 3)}
                              for i in range(8)])


def sft(model, tok, data, **overrides):
    kw = dict(output_dir=tempfile.mkdtemp(prefix="wdl-trl-"), per_device_train_batch_size=4,
              gradient_accumulation_steps=2, max_steps=2, learning_rate=0.1, optim="sgd",
              lr_scheduler_type="constant", logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
              disable_tqdm=True, seed=0, bf16=False)
    kw.update(overrides)
    if kw.get("padding_free"):
        kw["max_length"] = None  # TRL: padding-free without packing does not truncate
    return SFTTrainer(model=model, args=SFTConfig(**kw), train_dataset=data, processing_class=tok)


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    kernel = hf_loss.mixed_linear_cross_entropy
    monkeypatch.setattr(hf_loss, "mixed_linear_cross_entropy", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    return calls


@pytest.mark.parametrize("data,tied,bf16,order", [("prompt_completion", True, False, "before"),
                                                  ("prompt_completion", True, True, "before"),
                                                  ("text", False, False, "after")])
def test_sft_trainer_matches_stock_trl(request, tok, kernel_calls, data, tied, bf16, order):
    dataset = request.getfixturevalue(data)
    padding_free = data == "text"
    vocab = len(tok)
    stock = sft(tiny_model(tied, vocab=vocab), tok, dataset, bf16=bf16, padding_free=padding_free)
    stock.train()
    assert not kernel_calls  # stock TRL: its own fused head
    model = tiny_model(tied, vocab=vocab)
    if order == "before":
        apply_fused_loss(model, impl="torch")
    trainer = sft(model, tok, dataset, bf16=bf16, padding_free=padding_free)
    if order == "after":  # TRL has installed its fused head by now; the patch takes its calls over
        apply_fused_loss(trainer.model, impl="torch")
    trainer.train()
    assert len(kernel_calls) == 4  # every micro-batch's loss came from the wdl kernel
    logs = train_logs(trainer)
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= logs[0].keys()  # TRL's own metrics stay
    tol = dict(rtol=2e-3, atol=2e-4) if bf16 else dict(rtol=1e-5, atol=1e-6)
    assert_same_run(train_logs(stock), logs, params(stock.model), params(trainer.model), **tol)


def test_sft_trainer_trains_mixed_causal_lm(tok, prompt_completion, kernel_calls, tmp_path):
    """One optimizer step over the whole dataset in one micro-batch: TRL logs the mixed loss, TRL's entropy is the
    mixed distribution's, and save_model writes the strong model."""
    vocab, lam = len(tok), 0.4
    strong, weak = tiny_model(True, seed=0, vocab=vocab), tiny_model(False, seed=1, vocab=vocab)
    mixed = MixedCausalLM(strong, weak, lam=lam, impl="torch")
    trainer = sft(mixed, tok, prompt_completion, max_steps=1, output_dir=str(tmp_path), per_device_train_batch_size=8,
                  gradient_accumulation_steps=1)
    ref_strong, ref_weak = (tiny_model(True, seed=0, vocab=vocab), tiny_model(False, seed=1, vocab=vocab))
    nll = entropy = n = 0.0
    for sample in trainer.train_dataset:
        ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor(sample["labels"])
        keep = labels[1:] != -100  # completion-only loss
        with torch.no_grad():
            z = lam * ref_strong(input_ids=ids).logits[0, :-1] + (1 - lam) * ref_weak(input_ids=ids).logits[0, :-1]
        logp = torch.log_softmax(z.double(), -1)
        nll -= float(logp[keep].gather(1, labels[1:][keep, None]).sum())
        entropy -= float((logp.exp() * logp).sum(-1)[keep].sum())
        n += int(keep.sum())
    trainer.train()
    assert len(kernel_calls) == 1
    (log,) = train_logs(trainer)
    assert log["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert log["entropy"] == pytest.approx(entropy / n, rel=1e-5)
    trainer.save_model(str(tmp_path / "out"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in strong.state_dict().items())
    moved = max(float((strong.state_dict()[k] - ref_strong.state_dict()[k]).abs().max()) for k in strong.state_dict())
    assert moved > 1e-3


TRL_SETTINGS = {  # what TRL's trainers pass to add_fused_lm_head
    "sft": dict(outputs=("log_probs", "entropy", "is_top1")),
    "grpo": dict(temperature=0.7, outputs=("log_probs", "entropy")),
    "fp32-head": dict(cast_lm_head_to_fp32=True, outputs=("log_probs", "entropy", "is_top1")),
}


@pytest.mark.parametrize("name", sorted(TRL_SETTINGS))
@pytest.mark.parametrize("order", ["before", "after"])
def test_fused_head_calls_equal_trls_own_head(name, order):
    """A patched model answers model(..., fused_lm_head=True) as TRL's own fused head on the stock model would,
    with the settings TRL installed it with (temperature, an fp32 head under bf16 autocast), in either order."""
    from trl.trainer.utils import add_fused_lm_head

    settings = TRL_SETTINGS[name]
    ids, labels = batch(11, b=3)
    stock = tiny_model(False)
    add_fused_lm_head(stock, **settings)
    model = tiny_model(False)
    if order == "before":
        apply_fused_loss(model, impl="torch")
    add_fused_lm_head(model, **settings)
    if order == "after":
        apply_fused_loss(model, impl="torch")
    results = []
    for m in (stock, model):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "fp32-head"):
            out = m(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()  # -mean log_probs
        results.append((out, {n: p.grad for n, p in m.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    assert got.log_probs.dtype == want.log_probs.dtype == torch.float32
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.log_probs, want.log_probs, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-5, atol=2e-6)
    assert torch.equal(got.label_mask, want.label_mask)
    if want.is_top1 is not None:
        assert torch.equal(got.is_top1, want.is_top1)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_fused_head_calls_that_would_be_wrong_are_refused():
    from trl.trainer.utils import add_fused_lm_head

    ids, labels = batch(12)
    dpo = apply_fused_loss(tiny_model(True), impl="torch")
    add_fused_lm_head(dpo, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer does
    with pytest.raises(ValueError, match=r"asks for \['mean_logits'\]"):
        dpo(input_ids=ids, labels=labels, fused_lm_head=True)
    smoothed = apply_fused_loss(tiny_model(True), impl="torch", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing=0.1 under a TRL trainer"):
        smoothed(input_ids=ids, labels=labels, fused_lm_head=True)
    capped = tiny_model(True)
    capped.config.final_logit_softcapping = 30.0
    apply_fused_loss(capped, impl="torch")
    add_fused_lm_head(capped, temperature=0.7)
    with pytest.raises(ValueError, match="soft-capped"):
        capped(input_ids=ids, labels=labels, fused_lm_head=True)
    mixed = MixedCausalLM(tiny_model(True), tiny_model(False, seed=1), lam=0.4, impl="torch", z_loss=1e-3)
    with pytest.raises(ValueError, match="z_loss=0.001 under a TRL trainer"):
        mixed(input_ids=ids, labels=labels, fused_lm_head=True)


def test_mixed_causal_lm_takes_trls_temperature():
    from trl.trainer.utils import add_fused_lm_head

    ids, labels = batch(13)
    strong, weak = tiny_model(True), tiny_model(False, seed=1)
    mixed = MixedCausalLM(strong, weak, lam=0.4, impl="torch")
    add_fused_lm_head(mixed, temperature=0.7, outputs=("log_probs", "entropy"))
    out = mixed(input_ids=ids, labels=labels, fused_lm_head=True)
    with torch.no_grad():
        z = (0.4 * strong(input_ids=ids).logits + 0.6 * weak(input_ids=ids).logits)[:, :-1].double() / 0.7
    target = labels[:, 1:]
    want = torch.log_softmax(z, -1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(out.log_probs.double(), torch.where(target != -100, want, 0.0), rtol=1e-5, atol=2e-6)
