"""Shared pieces of the kernel tests: random problems, backends with tiny tiles, comparison to float64."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wdl_kernels.api import _mixed_ce
from wdl_kernels.reference import reference_loss_and_stats
from wdl_kernels.torch_impl import TorchBackend

STAT_NAMES = ("lse", "entropy", "nll", "target_logit", "margin", "max_prob")


def small_backends() -> dict:
    """Backends configured so that small problems still cross tile/split/chunk boundaries."""
    from wdl_kernels.triton_impl import TritonBackend

    return {
        "torch": TorchBackend(chunk_elements=96, max_token_chunk=8),
        "triton": TritonBackend(block_m=16, block_n=32, block_k=16, num_warps=4, num_stages=1, splits=3,
                                vocab_chunk=64, rowdot_block_m=16, rowdot_block_k=16, interpret=True),
    }


@dataclass
class Case:
    n: int = 37
    vocab: int = 101
    hs: int = 24
    hw: int | None = 16  # None: single head
    lam: float = 0.5
    ignore_frac: float = 0.3
    scale: float = 1.0  # multiplies the hidden states: logit magnitude
    reduction: str = "mean"
    dtype: torch.dtype = torch.float32
    seed: int = 0


def make_inputs(case: Case, device="cpu"):
    """Float64 leaf tensors (the reference's), their `case.dtype` copies (the kernel's), labels and upstream."""
    g = torch.Generator().manual_seed(case.seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(case.dtype).double()

    ref = [rand(case.n, case.hs, scale=case.scale), rand(case.vocab, case.hs, scale=case.hs ** -0.5)]
    if case.hw is not None:
        ref += [rand(case.n, case.hw, scale=case.scale), rand(case.vocab, case.hw, scale=case.hw ** -0.5)]
    labels = torch.randint(0, case.vocab, (case.n,), generator=g)
    labels[torch.rand(case.n, generator=g) < case.ignore_frac] = -100
    for x in ref:
        x.requires_grad_(True)
    ours = [x.detach().to(device=device, dtype=case.dtype).requires_grad_(True) for x in ref]
    up_shape = (case.n,) if case.reduction == "none" else ()
    upstream = torch.randn(up_shape, generator=g, dtype=torch.float64)
    return ref, ours, labels.to(device), upstream


def run_ours(ours, labels, case: Case, backend, upstream):
    hs, ws, *weak = ours
    hw, ww = weak if weak else (None, None)
    out = _mixed_ce(hs, ws, labels, hw, ww, case.lam, -100, case.reduction, True, backend)
    out.loss.backward(upstream.to(out.loss.device, torch.float32))
    return out


def run_reference(ref, labels, case: Case, upstream):
    hs, ws, *weak = ref
    hw, ww = weak if weak else (None, None)
    loss, stats = reference_loss_and_stats(hs, ws, labels.cpu(), hw, ww, lam=case.lam, reduction=case.reduction)
    loss.backward(upstream)
    return loss, stats


def assert_close(name, actual, expected, rtol, frac, floor=1e-12):
    """|actual - expected| <= rtol * |expected| + frac * max|expected| + floor, elementwise, and finite."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values {actual}"
    err = (actual - expected).abs()
    scale = expected.abs().max() if expected.numel() else 0.0
    bound = rtol * expected.abs() + frac * scale + floor
    worst = int((err - bound).argmax()) if err.numel() else 0
    assert bool((err <= bound).all()), (
        f"{name}: max excess at {worst}: got {actual.flatten()[worst]:.8g}, want {expected.flatten()[worst]:.8g} "
        f"(|err| {err.flatten()[worst]:.3g} > {bound.flatten()[worst]:.3g})"
    )


def tolerances(case: Case) -> tuple[float, float, float]:
    """(rtol, fraction of the tensor's max magnitude, absolute floor in logit units) for assert_close."""
    logit_scale = max(1.0, case.scale)
    if case.dtype == torch.float32:
        return 1e-5, 1e-5, 2e-6 * logit_scale
    return 1e-2, 5e-3, 1e-3 * logit_scale  # fp16/bf16: dL/dz is rounded to the input dtype for the GEMMs


def check_against_reference(case: Case, backend, device="cpu"):
    ref, ours, labels, upstream = make_inputs(case, device)
    out = run_ours(ours, labels, case, backend, upstream)
    ref_loss, ref_stats = run_reference(ref, labels, case, upstream)
    rtol, frac, floor = tolerances(case)
    assert out.loss.dtype == torch.float32
    assert_close("loss", out.loss, ref_loss, rtol, frac, floor)
    # A gradient's natural unit is |upstream| x |the other GEMM operand| (|dL/dz| <= 2|upstream| per row): near
    # one-hot rows p - 1 cancels below that unit's resolution, so the floor is relative to it.
    g_unit = float(upstream.abs().max()) if upstream.numel() else 0.0
    partner = {0: ref[1], 1: ref[0], 2: ref[3] if len(ref) > 2 else None, 3: ref[2] if len(ref) > 2 else None}
    for i, (name, a, r) in enumerate(zip(("d_hidden", "d_weight", "d_weak_hidden", "d_weak_weight"), ours, ref)):
        assert a.grad is not None, f"{name}: no gradient"
        assert a.grad.dtype == a.dtype, f"{name}: gradient dtype {a.grad.dtype} != input dtype {a.dtype}"
        unit = g_unit * float(partner[i].detach().abs().max())
        assert_close(name, a.grad, r.grad, rtol, frac, floor=(1e-6 if case.dtype == torch.float32 else 1e-3) * unit)
    for name, a, r in zip(STAT_NAMES, out.stats, ref_stats):
        assert a.dtype == torch.float32 and not a.requires_grad, name
        assert_close(f"stats.{name}", a, r, rtol, frac, floor)
    return out
