"""Correctness of both implementations against a float64 materialized reference (CPU: Triton in the interpreter)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.kernels.helpers import Case, check_against_reference, make_inputs, run_ours, small_backends

BACKENDS = small_backends()

CASES = {
    "base": Case(),
    "n1": Case(n=1, ignore_frac=0.0),
    "vocab_ragged": Case(vocab=67),
    "tiny_vocab": Case(vocab=2, n=9),
    "hw_ne_hs": Case(hs=40, hw=8),
    "lam0": Case(lam=0.0),
    "lam1": Case(lam=1.0),
    "lam_random": Case(lam=0.4173),
    "single_head": Case(hw=None),
    "no_ignored": Case(ignore_frac=0.0),
    "all_ignored": Case(ignore_frac=1.0),
    "logits_1e3": Case(scale=200.0),  # |z| ~ 1e3
    "sum": Case(reduction="sum"),
    "none": Case(reduction="none"),
    "none_single_head": Case(reduction="none", hw=None),
    "fp16": Case(dtype=torch.float16),
}


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_matches_float64_reference(impl, name):
    check_against_reference(CASES[name], BACKENDS[impl])


@pytest.mark.parametrize("impl", BACKENDS)
def test_all_ignored_is_zero_not_nan(impl):
    case = Case(ignore_frac=1.0)
    _, ours, labels, up = make_inputs(case)
    assert (labels == -100).all()
    out = run_ours(ours, labels, case, BACKENDS[impl], up)
    assert out.loss.item() == 0.0
    for x in ours:
        assert torch.count_nonzero(x.grad) == 0
    assert torch.isfinite(out.stats.entropy).all() and torch.isfinite(out.stats.lse).all()


@pytest.mark.parametrize("impl", BACKENDS)
def test_deterministic_bitwise(impl):
    case = Case(lam=0.37, reduction="sum")
    results = []
    for _ in range(2):
        _, ours, labels, up = make_inputs(case)
        out = run_ours(ours, labels, case, BACKENDS[impl], up)
        results.append([out.loss, *out.stats, *(x.grad for x in ours)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", BACKENDS)
def test_frozen_weak_side_gets_no_grad_and_strong_grads_unchanged(impl):
    case = Case()
    _, ours, labels, up = make_inputs(case)
    hs, ws, hw, ww = ours
    full = run_ours(ours, labels, case, BACKENDS[impl], up)
    grads = [x.grad.clone() for x in (hs, ws)]
    frozen = [hs.detach().clone().requires_grad_(), ws.detach().clone().requires_grad_(), hw.detach(), ww.detach()]
    out = run_ours(frozen, labels, case, BACKENDS[impl], up)
    assert frozen[2].grad is None and frozen[3].grad is None
    assert torch.equal(out.loss, full.loss)
    torch.testing.assert_close(frozen[0].grad, grads[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(frozen[1].grad, grads[1], rtol=1e-6, atol=1e-7)


def test_weak_side_does_no_gradient_work_when_frozen(monkeypatch):
    """Count the backward GEMMs: with the weak head frozen only the strong head's two GEMM kinds run."""
    import wdl_kernels.function as fn

    calls = []
    for name in ("accumulate_matmul", "matmul_into"):
        real = getattr(fn, name)
        monkeypatch.setattr(fn, name, lambda *a, _real=real, _name=name: (calls.append(a[2].shape), _real(*a))[1])
    case = Case(hs=24, hw=16)
    _, ours, labels, up = make_inputs(case)
    hs, ws, hw, ww = ours
    run_ours([hs, ws, hw.detach(), ww.detach()], labels, case, BACKENDS["torch"], up)
    assert calls and all(16 not in shape for shape in calls), calls


@pytest.mark.parametrize("impl", BACKENDS)
def test_forward_only_path_matches_training_path(impl):
    case = Case()
    _, ours, labels, _ = make_inputs(case)
    hs, ws, hw, ww = ours
    from wdl_kernels.api import _mixed_ce

    with torch.no_grad():
        scored = _mixed_ce(hs, ws, labels, hw, ww, case.lam, -100, "none", True, BACKENDS[impl])
    trained = _mixed_ce(hs, ws, labels, hw, ww, case.lam, -100, "none", True, BACKENDS[impl])
    assert not scored.loss.requires_grad and trained.loss.requires_grad
    assert torch.equal(scored.loss, trained.loss.detach())
    for a, b in zip(scored.stats, trained.stats):
        assert torch.equal(a, b)


def test_impls_agree_through_public_api():
    import wdl_kernels

    case = dataclasses.replace(Case(), seed=3)
    _, ours, labels, _ = make_inputs(case)
    outs = [wdl_kernels.mixed_linear_cross_entropy(*ours[:2], labels, *ours[2:], lam=0.3, impl=impl, return_stats=True)
            for impl in ("torch", "triton")]
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0].stats, outs[1].stats):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
