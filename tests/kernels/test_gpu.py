"""GPU checks (skipped without CUDA): the compiled Triton kernels of both modes at Qwen3 shapes against a float64
reference, bf16/fp16/fp32, loss options, determinism, the memory bounds, torch.compile."""

from __future__ import annotations

import pytest
import torch

import wdl_kernels
from tests.kernels.helpers import Case, check_against_reference

pytestmark = pytest.mark.gpu
QWEN_V = 151936
MODES = ("lean", "fast")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("two_heads", [False, True])
def test_qwen3_vocab_against_float64(dtype, two_heads, mode):
    case = Case(n=512, vocab=QWEN_V, hs=1024, hw=1024 if two_heads else None, lam=0.42, dtype=dtype, seed=7,
                mode=mode)
    check_against_reference(case, "triton", device="cuda")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ragged_shapes_and_reductions(reduction, mode):
    case = Case(n=333, vocab=50_001, hs=2560, hw=1024, lam=0.5, dtype=torch.bfloat16, reduction=reduction,
                ignore_frac=0.4, seed=11, mode=mode)
    check_against_reference(case, "triton", device="cuda")


@pytest.mark.parametrize("mode", MODES)
def test_loss_options_on_gpu(mode):
    case = Case(n=300, vocab=32_003, hs=512, hw=256, bias=True, temperature=1.3, softcap=20.0, z_loss=1e-3,
                label_smoothing=0.1, dtype=torch.bfloat16, seed=3, mode=mode)
    check_against_reference(case, "triton", device="cuda")


@pytest.mark.parametrize("mode", MODES)
def test_extreme_logits_and_all_ignored(mode):
    check_against_reference(Case(n=256, vocab=32_000, hs=512, hw=512, scale=200.0, dtype=torch.bfloat16, mode=mode),
                            "triton", device="cuda")
    check_against_reference(Case(n=64, vocab=32_000, hs=512, hw=512, ignore_frac=1.0, dtype=torch.bfloat16,
                                 mode=mode), "triton", device="cuda")


def _two_heads(n, h, dtype=torch.bfloat16, ignore_frac=0.0, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hs = torch.randn(n, h, device="cuda", dtype=dtype, generator=g).requires_grad_()
    ws = (torch.randn(QWEN_V, h, device="cuda", generator=g) * h ** -0.5).to(dtype).requires_grad_()
    hw = torch.randn(n, h, device="cuda", dtype=dtype, generator=g).requires_grad_()
    ww = (torch.randn(QWEN_V, h, device="cuda", generator=g) * h ** -0.5).to(dtype).requires_grad_()
    y = torch.randint(0, QWEN_V, (n,), device="cuda", generator=g)
    y[torch.rand(n, device="cuda", generator=g) < ignore_frac] = -100
    return [hs, ws, hw, ww], y


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_bitwise_on_gpu(mode):
    xs, y = _two_heads(2048, 1024, ignore_frac=0.1)
    runs = []
    for _ in range(2):
        for x in xs:
            x.grad = None
        out = wdl_kernels.mixed_linear_cross_entropy(xs[0], xs[1], y, xs[2], xs[3], return_stats=True, mode=mode)
        out.loss.backward()
        runs.append([out.loss, *out.stats, *(x.grad for x in xs)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _extra_memory(mode: str, n: int, h: int, ignore_frac: float) -> int:
    """Peak memory of one fwd+bwd beyond the inputs and the returned gradients, in bytes."""
    xs, y = _two_heads(n, h, ignore_frac=ignore_frac)
    grad_bytes = sum(x.numel() * x.element_size() for x in xs)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = wdl_kernels.mixed_linear_cross_entropy(xs[0], xs[1], y, xs[2], xs[3], return_stats=True, mode=mode,
                                                 reduction="sum")
    out.loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base - grad_bytes


@pytest.mark.parametrize("ignore_frac", [0.0, 0.1])
def test_lean_extra_memory_of_two_4b_heads_is_bounded(ignore_frac):
    """Two Qwen3-4B heads (H=2560), N=16384, bf16, with and without ignored labels: <= 512 MB extra."""
    extra = _extra_memory("lean", 16384, 2560, ignore_frac)
    assert extra <= 512e6, f"extra memory {extra / 1e6:.0f} MB"


def test_fast_extra_memory_is_the_documented_formula():
    """fast.py: workspace (token_chunk x V x 2 + tile maxima) + fp32 dW accumulators (several chunks here)."""
    from wdl_kernels.triton_backend import TritonBackend

    n, h = 16384, 2560
    backend = TritonBackend.for_device(torch.device("cuda"))
    rows = backend.fast_multi_chunk_rows
    formula = rows * QWEN_V * 2 + rows * (QWEN_V // 128 + 1) * 4 + 4 * QWEN_V * 2 * h
    extra = _extra_memory("fast", n, h, 0.1)
    assert extra <= formula * 1.05 + 64e6, f"extra {extra / 1e6:.0f} MB vs formula {formula / 1e6:.0f} MB"


@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_fullgraph_on_gpu(mode):
    xs, y = _two_heads(1024, 512)

    def loss(hs, ws, hw, ww):
        out = wdl_kernels.mixed_linear_cross_entropy(hs, ws, y, hw, ww, mode=mode, reduction="sum")
        return out.loss / 7

    eager = loss(*xs)
    eager.backward()
    want = [x.grad.clone() for x in xs]
    for x in xs:
        x.grad = None
    compiled = torch.compile(loss, fullgraph=True)(*xs)
    compiled.backward()
    assert torch.equal(compiled, eager)
    for a, b in zip((x.grad for x in xs), want):
        assert torch.equal(a, b)


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


def test_bad_labels_trip_a_device_assert_without_a_sync():
    """validate=True on CUDA uses a device-side assertion (no host sync); a bad label fails at the next sync."""
    import subprocess
    import sys

    code = ("import torch, wdl_kernels\n"
            "h = torch.randn(8, 64, device='cuda'); w = torch.randn(100, 64, device='cuda')\n"
            "y = torch.tensor([1, 2, 3, 100, 5, 6, 7, 8], device='cuda')\n"
            "out = wdl_kernels.mixed_linear_cross_entropy(h, w, y)\n"
            "torch.cuda.synchronize()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "labels outside [0, V=100)" in res.stderr + res.stdout
