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
from tests.kernels.hf_common import assert_same_run, params, tiny_model, train_logs
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


@pytest.mark.parametrize("data,bf16,order", [("prompt_completion", False, "before"),
                                             ("prompt_completion", True, "before"),
                                             ("text", False, "after")])
def test_sft_trainer_matches_stock_trl(request, tok, kernel_calls, data, bf16, order):
    dataset = request.getfixturevalue(data)
    padding_free = data == "text"
    vocab = len(tok)
    stock = sft(tiny_model(True, vocab=vocab), tok, dataset, bf16=bf16, padding_free=padding_free)
    stock.train()
    assert not kernel_calls  # stock TRL: its own fused head
    model = tiny_model(True, vocab=vocab)
    if order == "before":
        apply_fused_loss(model, impl="torch")
    trainer = sft(model, tok, dataset, bf16=bf16, padding_free=padding_free)
    if order == "after":  # TRL has installed its fused head by now; the patch takes its calls over
        apply_fused_loss(trainer.model, impl="torch")
    trainer.train()
    assert len(kernel_calls) == 4  # every micro-batch's loss came from the wdl kernel
    logs = train_logs(trainer)
    assert {"entropy", "mean_token_accuracy"} <= logs[0].keys()
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
