"""The two GEMM forms of the backward, with fp32 accumulation whatever the operand dtype.

On CUDA, bf16/fp16 operands stay in their dtype (tensor cores) and results land in fp32 via cuBLAS's
mixed-precision `out_dtype` path; elsewhere the operands are upcast to fp32 chunk by chunk.
"""

from __future__ import annotations

import functools

import torch

_F32 = torch.float32
# Row block for the fallback "mm into a temporary, then add" path: bounds the temporary at 4096 x H fp32.
_FALLBACK_ROWS = 4096


@functools.lru_cache(maxsize=None)
def _has_out_dtype() -> bool:
    """torch >= 2.8 has mm/addmm overloads with an `out_dtype` (bf16/fp16 in, fp32 out; CUDA only)."""
    return "dtype" in torch.ops.aten.mm.overloads() and "dtype_out" in torch.ops.aten.addmm.overloads()


@functools.lru_cache(maxsize=None)
def _inplace_fp32_addmm_ok(device_index: int) -> bool:
    """Does `addmm(acc_fp32, a_bf16, b_bf16, out_dtype=fp32, out=acc)` work and agree with the slow path here?"""
    if not _has_out_dtype():
        return False
    dev = torch.device("cuda", device_index)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(96, 80, device=dev, generator=gen).bfloat16()
    b = torch.randn(80, 72, device=dev, generator=gen).bfloat16()
    acc = torch.randn(96, 72, device=dev, generator=gen)
    want = acc + 0.75 * (a.float() @ b.float())
    try:
        got = acc.clone()
        torch.addmm(got, a, b, alpha=0.75, out_dtype=_F32, out=got)
    except (RuntimeError, TypeError):
        return False
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_cuda and _has_out_dtype():
        return torch.mm(a, b, out_dtype=_F32)
    return torch.mm(a.float(), b.float())


def accumulate_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """acc (fp32) += alpha * a @ b."""
    assert acc.dtype == _F32
    if not a.is_cuda or a.dtype == _F32 or b.dtype == _F32:
        acc.addmm_(a if a.dtype == _F32 else a.float(), b if b.dtype == _F32 else b.float(), alpha=alpha)
        return
    if a.dtype == b.dtype and _inplace_fp32_addmm_ok(a.device.index or 0):
        torch.addmm(acc, a, b, alpha=alpha, out_dtype=_F32, out=acc)
        return
    for r0 in range(0, a.shape[0], _FALLBACK_ROWS):
        acc[r0 : r0 + _FALLBACK_ROWS].add_(_mm_fp32(a[r0 : r0 + _FALLBACK_ROWS], b), alpha=alpha)


def matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """out = alpha * a @ b, one GEMM (fp32 accumulation inside, one rounding to out's dtype)."""
    torch.addmm(out, a, b, beta=0.0, alpha=alpha, out=out)
