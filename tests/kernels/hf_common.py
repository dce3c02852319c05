"""Shared pieces of the wdl_kernels.hf tests: tiny Qwen3 models, token data, a padding collator, Trainer runs."""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoModelForCausalLM

from wdl.tiny import tiny_qwen3_config

V = 300


def tiny_model(tied: bool = True, seed: int = 0, vocab: int = V):
    torch.manual_seed(seed)
    config = tiny_qwen3_config(vocab, tie_word_embeddings=tied, hidden_size=64, intermediate_size=128)
    return AutoModelForCausalLM.from_config(config).float()


def batch(seed=0, b=2, t=17, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens
    return ids, labels


def rows(n=16, seed=0, vocab=V):
    """Variable-length samples with a masked prompt of random length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(1, vocab, (t,), generator=g)
        labels = ids.clone()
        labels[: int(torch.randint(1, t - 2, (1,), generator=g))] = -100
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


def collate(samples):
    """Right padding: input_ids with 0, labels with -100, an attention mask."""
    t = max(len(s["input_ids"]) for s in samples)

    def pad(x, v):
        return list(x) + [v] * (t - len(x))

    return {
        "input_ids": torch.tensor([pad(s["input_ids"], 0) for s in samples]),
        "labels": torch.tensor([pad(s["labels"], -100) for s in samples]),
        "attention_mask": torch.tensor([pad([1] * len(s["input_ids"]), 0) for s in samples]),
    }


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def training_args(**overrides):
    """SGD with a large constant lr: any error in the loss scale shows in the updates (AdamW would hide it)."""
    from transformers import TrainingArguments

    kw = dict(output_dir=tempfile.mkdtemp(prefix="wdl-hf-"), per_device_train_batch_size=2,
              gradient_accumulation_steps=2, max_steps=2, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
              logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
              dataloader_num_workers=0)
    kw.update(overrides)
    return TrainingArguments(**kw)


def train_logs(trainer) -> list[dict]:
    return [{k: h[k] for k in ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens") if k in h}
            for h in trainer.state.log_history if "loss" in h]


def assert_same_run(a_logs, b_logs, a_params, b_params, *, rtol, atol):
    assert len(a_logs) == len(b_logs) > 0
    for ra, rb in zip(a_logs, b_logs):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert abs(ra[k] - rb[k]) <= atol + rtol * abs(ra[k]), (k, ra, rb)
    assert a_params.keys() == b_params.keys()
    for n in a_params:
        torch.testing.assert_close(b_params[n], a_params[n], rtol=rtol, atol=atol, msg=n)
