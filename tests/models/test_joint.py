"""JointModel against a materialized reference; hidden-state path; packed sequences; HF export round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from wdl.models import FusedMixedCrossEntropy, JointModel, decoder_hidden_states, lm_head_weight, save_hf_checkpoint
from wdl.tiny import IM_END, tiny_qwen3_config

TORCH_LOSS = FusedMixedCrossEntropy(impl="torch")


def _model(vocab: int, seed: int, **kw):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(tiny_qwen3_config(vocab, num_hidden_layers=2, hidden_size=64,
                                                           intermediate_size=128, **kw))
    m.config.use_cache = False
    return m


def _batch(vocab: int, B: int = 2, T: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    labels = torch.randint(0, vocab, (B, T), generator=g)
    labels[:, :5] = -100
    labels[1, -3:] = -100
    pos = torch.cat([torch.arange(10), torch.arange(T - 10)]).repeat(B, 1)  # two packed sequences per row
    return ids, labels, pos


def _reference(strong, weak, ids, labels, pos, lam):
    z = strong(input_ids=ids, position_ids=pos).logits
    if weak is not None:
        z = lam * z + (1 - lam) * weak(input_ids=ids, position_ids=pos).logits
    return F.cross_entropy(z.reshape(-1, z.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("mode", ["sft", "joint", "joint_frozen", "joint_untied"])
def test_fused_loss_and_all_gradients_match_materialized_reference(mode):
    vocab, lam = 300, 0.3
    tie = mode != "joint_untied"
    models = [_model(vocab, 1, tie_word_embeddings=tie), _model(vocab, 2, tie_word_embeddings=tie)]
    refs = [_model(vocab, 1, tie_word_embeddings=tie), _model(vocab, 2, tie_word_embeddings=tie)]
    for m, r in zip(models, refs):
        r.load_state_dict(m.state_dict())
    weak, weak_ref = (None, None) if mode == "sft" else (models[1], refs[1])
    frozen = mode == "joint_frozen"
    if frozen:
        weak_ref.requires_grad_(False)
    joint = JointModel(models[0], weak, lam=lam, freeze_weak=frozen, loss=TORCH_LOSS)
    ids, labels, pos = _batch(vocab)
    out = joint(ids, labels, pos)
    out.loss.backward()
    ref = _reference(refs[0], weak_ref, ids, labels, pos, lam)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-4)
    pairs = [(models[0], refs[0])] + ([(weak, weak_ref)] if weak is not None else [])
    for m, r in pairs:
        for (name, p), (_, q) in zip(m.named_parameters(), r.named_parameters()):
            if frozen and m is weak:
                assert p.grad is None, name
                continue
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    # per-token stats of the mixed distribution against the materialized logits
    with torch.no_grad():
        z = refs[0](input_ids=ids, position_ids=pos).logits
        if weak is not None:
            z = lam * z + (1 - lam) * refs[1](input_ids=ids, position_ids=pos).logits
        z = z.reshape(-1, vocab)
        valid = labels.reshape(-1) != -100
        logp = z.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(out.stats.entropy, entropy, rtol=1e-4, atol=1e-4)
        nll = -logp.gather(1, labels.reshape(-1).clamp(min=0)[:, None]).squeeze(1)
        torch.testing.assert_close(out.stats.nll[valid], nll[valid], rtol=1e-4, atol=1e-4)


def test_frozen_weak_stays_in_eval_mode_and_without_grad():
    s, w = _model(300, 1), _model(300, 2)
    joint = JointModel(s, w, freeze_weak=True)
    joint.train()
    assert s.training and not w.training
    assert not any(p.requires_grad for p in w.parameters())
    with pytest.raises(ValueError, match="freeze_weak"):
        JointModel(s, None, freeze_weak=True)
    with pytest.raises(ValueError, match="vocabulary"):
        JointModel(s, _model(301, 3))


def test_hidden_states_path_never_calls_lm_head():
    s = _model(300, 1)
    called = []
    s.lm_head.register_forward_hook(lambda *a: called.append(1))
    ids, labels, pos = _batch(300)
    JointModel(s, loss=TORCH_LOSS)(ids, labels, pos)
    assert not called
    assert lm_head_weight(s) is s.model.embed_tokens.weight  # tied


def test_packed_sequences_do_not_attend_to_each_other():
    s = _model(300, 1)
    ids = torch.randint(0, 300, (1, 20))
    pos = torch.cat([torch.arange(8), torch.arange(12)])[None]
    with torch.no_grad():
        packed = decoder_hidden_states(s, input_ids=ids, position_ids=pos)
        first = decoder_hidden_states(s, input_ids=ids[:, :8], position_ids=torch.arange(8)[None])
        second = decoder_hidden_states(s, input_ids=ids[:, 8:], position_ids=torch.arange(12)[None])
    torch.testing.assert_close(packed[:, :8], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[:, 8:], second, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_export_reloads_with_identical_logits(tmp_path, tiny_tokenizer, tie):
    src = tmp_path / "src"
    tiny_tokenizer.save_pretrained(src)
    m = _model(len(tiny_tokenizer), 4, tie_word_embeddings=tie)
    out = save_hf_checkpoint(m.config, m.state_dict(), tmp_path / "export", tokenizer_path=src)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, m(ids).logits)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tie
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"]
    assert tiny_tokenizer.convert_tokens_to_ids(IM_END) in eos and tiny_tokenizer.eos_token_id in eos
    assert (out / "tokenizer.json").is_file()


def test_autocast_runs_the_fused_head_in_the_autocast_dtype():
    s = _model(300, 1)
    seen = []
    import wdl_kernels

    original = wdl_kernels.mixed_linear_cross_entropy

    def spy(hidden, weight, *a, **k):
        seen.append((hidden.dtype, weight.dtype))
        return original(hidden, weight, *a, **k)

    ids, labels, pos = _batch(300)
    joint = JointModel(s, loss=TORCH_LOSS)
    try:
        wdl_kernels.mixed_linear_cross_entropy = spy
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = joint(ids, labels, pos)
    finally:
        wdl_kernels.mixed_linear_cross_entropy = original
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
