"""Shared pieces of the kernel tests: random problems, backends with tiny tiles, comparison to float64."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import wdl_kernels
from wdl_kernels import register_backend
from wdl_kernels.reference import reference_loss_and_stats
from wdl_kernels.torch_backend import TorchBackend

STAT_NAMES = ("lse", "entropy", "nll", "target_logit", "margin", "max_prob", "accuracy")
IMPLS = ("torch-small", "triton-small")
MODES = ("lean", "fast")


def register_small_backends() -> None:
    """Backends configured so that small problems still cross tile, split and chunk boundaries."""
    from wdl_kernels.triton_backend import TritonBackend

    register_backend("torch-small", TorchBackend(chunk_elements=96, max_token_chunk=8, token_chunk=10))
    register_backend("triton-small", TritonBackend(
        block_m=16, block_n=32, block_k=16, num_warps=4, num_stages=1, group_m=2, splits=3, vocab_chunk=64,
        token_chunk=16, fast_grad_block=(16, 32), interpret=True))


register_small_backends()


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
    mode: str = "lean"
    bias: bool = False
    temperature: float = 1.0
    softcap: float | None = None
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    num_items: float | None = None

    def options(self) -> dict:
        return dict(lam=self.lam, reduction=self.reduction, temperature=self.temperature, softcap=self.softcap,
                    z_loss=self.z_loss, label_smoothing=self.label_smoothing, num_items=self.num_items)

    def replace(self, **kw) -> "Case":
        return dataclasses.replace(self, **kw)


def make_inputs(case: Case, device="cpu"):
    """Float64 leaf tensors (the reference's), their `case.dtype` copies (the kernel's), labels and upstream.

    Order: hidden, weight, [weak_hidden, weak_weight], [bias, [weak_bias]].
    """
    g = torch.Generator().manual_seed(case.seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(case.dtype).double()

    ref = [rand(case.n, case.hs, scale=case.scale), rand(case.vocab, case.hs, scale=case.hs ** -0.5)]
    if case.hw is not None:
        ref += [rand(case.n, case.hw, scale=case.scale), rand(case.vocab, case.hw, scale=case.hw ** -0.5)]
    if case.bias:
        ref += [rand(case.vocab)] + ([rand(case.vocab, scale=0.5)] if case.hw is not None else [])
    labels = torch.randint(0, case.vocab, (case.n,), generator=g)
    labels[torch.rand(case.n, generator=g) < case.ignore_frac] = -100
    for x in ref:
        x.requires_grad_(True)
    ours = [x.detach().to(device=device, dtype=case.dtype).requires_grad_(True) for x in ref]
    up_shape = (case.n,) if case.reduction == "none" else ()
    upstream = torch.randn(up_shape, generator=g, dtype=torch.float64)
    return ref, ours, labels.to(device), upstream


def split_inputs(tensors, case: Case) -> dict:
    """Keyword arguments of the loss from make_inputs' list."""
    it = iter(tensors)
    kw = dict(hidden=next(it), weight=next(it))
    if case.hw is not None:
        kw.update(weak_hidden=next(it), weak_weight=next(it))
    if case.bias:
        kw["bias"] = next(it)
        if case.hw is not None:
            kw["weak_bias"] = next(it)
    return kw


def run_ours(ours, labels, case: Case, impl: str, upstream, **extra):
    out = wdl_kernels.mixed_linear_cross_entropy(labels=labels, **split_inputs(ours, case), **case.options(),
                                                 mode=case.mode, return_stats=True, impl=impl, **extra)
    out.loss.backward(upstream.to(out.loss.device, torch.float32))
    return out


def run_reference(ref, labels, case: Case, upstream):
    loss, stats = reference_loss_and_stats(labels=labels.cpu(), **split_inputs(ref, case), **case.options())
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


def check_against_reference(case: Case, impl: str, device="cpu", **extra):
    ref, ours, labels, upstream = make_inputs(case, device)
    out = run_ours(ours, labels, case, impl, upstream, **extra)
    ref_loss, ref_stats = run_reference(ref, labels, case, upstream)
    rtol, frac, floor = tolerances(case)
    assert out.loss.dtype == torch.float32
    assert_close("loss", out.loss, ref_loss, rtol, frac, floor * max(1.0, float(ref_loss.detach().abs().max())))
    # A gradient's natural unit is |upstream| x |the other GEMM operand| (|dL/dz| <= 2|upstream| per row): near
    # one-hot rows p - 1 cancels below that unit's resolution, so the floor is relative to it.
    g_unit = float(upstream.abs().max()) if upstream.numel() else 0.0
    names = list(split_inputs(range(len(ref)), case))
    partner = {"hidden": "weight", "weight": "hidden", "weak_hidden": "weak_weight", "weak_weight": "weak_hidden"}
    for name, a, r in zip(names, ours, ref):
        assert a.grad is not None, f"d_{name}: no gradient"
        assert a.grad.dtype == a.dtype, f"d_{name}: gradient dtype {a.grad.dtype} != input dtype {a.dtype}"
        other = ref[names.index(partner[name])] if name in partner else None
        unit = g_unit * (float(other.detach().abs().max()) if other is not None else float(labels.numel()))
        assert_close(f"d_{name}", a.grad, r.grad, rtol, frac,
                     floor=(1e-6 if case.dtype == torch.float32 else 1e-3) * unit / case.temperature)
    for name, a, r in zip(STAT_NAMES, out.stats, ref_stats):
        assert a.dtype == torch.float32 and not a.requires_grad, name
        assert_close(f"stats.{name}", a, r, rtol, frac, floor)
    return out
