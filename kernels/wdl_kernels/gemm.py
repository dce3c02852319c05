"""The gradient GEMMs with fp32 results whatever the operand dtype, and a report of which path each takes.

Two forms: `mm_fp32(a, b)` returns a @ b in float32 (then scaled and rounded once by the caller), and
`addmm_fp32_(acc, a, b)` accumulates a @ b into a float32 tensor in place. On CUDA, bf16/fp16 operands stay in
their dtype (tensor cores) and results land in fp32 through torch's `out_dtype` matmul overloads (torch >= 2.8);
an in-place fp32 `addmm` is used when this torch accepts it, else row blocks of fp32 temporaries. Elsewhere the
operands are upcast to fp32 block by block. `gemm_paths(device)` says which paths run on a device.
"""

from __future__ import annotations

import functools

import torch

_F32 = torch.float32
_HALF = (torch.float16, torch.bfloat16)
# Rows per block of the fallback paths: bounds a temporary at BLOCK_ROWS x H fp32.
BLOCK_ROWS = 4096


@functools.lru_cache(maxsize=None)
def has_out_dtype() -> bool:
    """torch >= 2.8 has mm/addmm overloads with an `out_dtype` (bf16/fp16 in, fp32 out; CUDA only)."""
    return "dtype" in torch.ops.aten.mm.overloads() and "dtype_out" in torch.ops.aten.addmm.overloads()


@functools.lru_cache(maxsize=None)
def inplace_fp32_addmm_ok(device_index: int) -> bool:
    """Does `addmm(acc_fp32, a_bf16, b_bf16, out_dtype=fp32, out=acc)` work and agree with fp32 math here?"""
    if not has_out_dtype():
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


def _half_pair(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.is_cuda and a.dtype in _HALF and a.dtype == b.dtype


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == _F32 else x.float()


def mm_fp32_path(a: torch.Tensor, b: torch.Tensor) -> str:
    if _half_pair(a, b) and has_out_dtype():
        return "cublas-out-dtype-fp32"
    return "fp32-operands" if a.dtype == b.dtype == _F32 else "upcast-blocks"


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as float32 (fp32 accumulation inside; the caller rounds once)."""
    path = mm_fp32_path(a, b)
    if path == "cublas-out-dtype-fp32":
        return torch.mm(a, b, out_dtype=_F32)
    if path == "fp32-operands":
        return torch.mm(a, b)
    out = torch.empty(a.shape[0], b.shape[1], dtype=_F32, device=a.device)
    bf = _f32(b)
    for r0 in range(0, a.shape[0], BLOCK_ROWS):
        torch.mm(_f32(a[r0:r0 + BLOCK_ROWS]), bf, out=out[r0:r0 + BLOCK_ROWS])
    return out


def addmm_fp32_path(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> str:
    if _half_pair(a, b):
        if inplace_fp32_addmm_ok(a.device.index or 0):
            return "cublas-inplace-fp32-addmm"
        return "cublas-blocked-fp32-temporaries"
    return "fp32-operands" if a.dtype == b.dtype == _F32 else "upcast-blocks"


def addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> None:
    """acc (fp32) += alpha * a @ b."""
    assert acc.dtype == _F32
    path = addmm_fp32_path(acc, a, b)
    if path == "cublas-inplace-fp32-addmm":
        torch.addmm(acc, a, b, alpha=alpha, out_dtype=_F32, out=acc)
    elif path == "fp32-operands":
        acc.addmm_(a, b, alpha=alpha)
    elif path == "cublas-blocked-fp32-temporaries":
        for r0 in range(0, a.shape[0], BLOCK_ROWS):
            acc[r0:r0 + BLOCK_ROWS].add_(torch.mm(a[r0:r0 + BLOCK_ROWS], b, out_dtype=_F32), alpha=alpha)
    else:
        bf = _f32(b)
        for r0 in range(0, a.shape[0], BLOCK_ROWS):
            acc[r0:r0 + BLOCK_ROWS].addmm_(_f32(a[r0:r0 + BLOCK_ROWS]), bf, alpha=alpha)


def gemm_paths(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Which path each GEMM form takes for `dtype` operands on `device` (benchmarks record this)."""
    device = torch.device(device)
    a = torch.empty(2, 2, dtype=dtype, device=device)
    acc = torch.empty(2, 2, dtype=_F32, device=device)
    return {
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "mm_fp32": mm_fp32_path(a, a),
        "addmm_fp32": addmm_fp32_path(acc, a, a),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }
