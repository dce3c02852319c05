"""GPU checks (skipped without CUDA): compiled Triton kernels at Qwen3 shapes, bf16/fp16/fp32, memory bound."""

from __future__ import annotations

import pytest
import torch

import wdl_kernels
from tests.kernels.helpers import Case, check_against_reference
from wdl_kernels.triton_impl import TritonBackend

pytestmark = pytest.mark.gpu
QWEN_V = 151936


def backend():
    return TritonBackend.for_device(torch.device("cuda"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("two_heads", [False, True])
def test_qwen3_vocab_against_float64(dtype, two_heads):
    case = Case(n=512, vocab=QWEN_V, hs=1024, hw=1024 if two_heads else None, lam=0.42, dtype=dtype, seed=7)
    check_against_reference(case, backend(), device="cuda")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ragged_shapes_and_reductions(reduction):
    case = Case(n=333, vocab=50_001, hs=2560, hw=1024, lam=0.5, dtype=torch.bfloat16, reduction=reduction,
                ignore_frac=0.4, seed=11)
    check_against_reference(case, backend(), device="cuda")


def test_extreme_logits_and_all_ignored():
    check_against_reference(Case(n=256, vocab=32_000, hs=512, hw=512, scale=200.0, dtype=torch.bfloat16),
                            backend(), device="cuda")
    check_against_reference(Case(n=64, vocab=32_000, hs=512, hw=512, ignore_frac=1.0, dtype=torch.bfloat16),
                            backend(), device="cuda")


def test_deterministic_bitwise_on_gpu():
    torch.manual_seed(0)
    n, h = 2048, 1024
    hs = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ws = (torch.randn(QWEN_V, h, device="cuda") * h ** -0.5).bfloat16().requires_grad_()
    hw = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ww = (torch.randn(QWEN_V, h, device="cuda") * h ** -0.5).bfloat16().requires_grad_()
    y = torch.randint(0, QWEN_V, (n,), device="cuda")
    runs = []
    for _ in range(2):
        for x in (hs, ws, hw, ww):
            x.grad = None
        out = wdl_kernels.mixed_linear_cross_entropy(hs, ws, y, hw, ww, return_stats=True)
        out.loss.backward()
        runs.append([out.loss, *out.stats, hs.grad, ws.grad, hw.grad, ww.grad])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_extra_memory_of_two_4b_heads_is_bounded():
    """Two Qwen3-4B heads (H=2560), N=16384, bf16: extra memory beyond inputs and returned grads <= 512 MB."""
    torch.manual_seed(0)
    n, h = 16384, 2560
    hs = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ws = (torch.randn(QWEN_V, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5).requires_grad_()
    hw = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ww = (torch.randn(QWEN_V, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5).requires_grad_()
    y = torch.randint(0, QWEN_V, (n,), device="cuda")
    grads = [torch.empty_like(x) for x in (hs, ws, hw, ww)]  # what the returned gradients will occupy
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    del grads
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = wdl_kernels.mixed_linear_cross_entropy(hs, ws, y, hw, ww, return_stats=True)
    out.loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - grad_bytes
    assert extra <= 512 * 2**20, f"extra memory {extra / 2**20:.0f} MiB"


def test_triton_and_torch_impls_agree_on_gpu():
    torch.manual_seed(0)
    n, h, v = 1024, 512, 32_768
    args = [torch.randn(n, h, device="cuda", dtype=torch.bfloat16),
            torch.randn(v, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5,
            torch.randint(0, v, (n,), device="cuda")]
    a = wdl_kernels.mixed_linear_cross_entropy(*args, impl="triton", return_stats=True)
    b = wdl_kernels.mixed_linear_cross_entropy(*args, impl="torch", return_stats=True)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.stats.entropy, b.stats.entropy, rtol=1e-3, atol=1e-3)
