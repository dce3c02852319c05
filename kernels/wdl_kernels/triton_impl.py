"""Triton backend: launches the kernels of triton_kernels.py; the backward GEMMs go to cuBLAS (function.py).

Tile configurations are fixed per (device capability, dtype), never autotuned at run time: an autotuner that
picks by timing could pick differently in two runs and change the reduction order, i.e. the bits.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import torch
import triton

from .problem import Problem
from .stats import Partials, merge_split_partials
from .triton_kernels import mixed_grad_logits_kernel, mixed_lse_forward_kernel

# Bytes of dL/dz workspace per backward vocabulary chunk (rows x chunk, input dtype). With the fp32 dh
# accumulators this keeps the extra memory of two 4B heads at N = 16384 under ~0.5 GB.
DEFAULT_WORKSPACE_BYTES = int(os.environ.get("WDL_KERNELS_WORKSPACE_MB", "128")) * (1 << 20)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclass(frozen=True)
class TritonBackend:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3
    group_m: int = 8
    splits: int | None = None  # vocabulary splits of the forward; None = enough programs to fill the GPU
    vocab_chunk: int | None = None  # backward chunk; None = from DEFAULT_WORKSPACE_BYTES
    sm_count: int = 132
    interpret: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> "TritonBackend":
        if device.type != "cuda":  # the interpreter: small tiles keep numpy work per program small
            return cls(block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=1, interpret=True)
        return cls(sm_count=_sm_count(device.index or 0))

    def _for_dtype(self, dtype: torch.dtype) -> "TritonBackend":
        # fp32 uses exact (IEEE) dots: 4x the registers/SMEM per element of bf16, so halve the tile.
        if dtype == torch.float32 and not self.interpret:
            return replace(self, block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2)
        return self

    # --- shared launch arguments -------------------------------------------------------------------
    @staticmethod
    def _head_args(prob: Problem):
        hs, ws = prob.hidden, prob.weight
        hw = prob.weak_hidden if prob.has_weak else hs
        ww = prob.weak_weight if prob.has_weak else ws
        use_strong, use_weak = prob.use_strong, prob.use_weak
        cs, cw = prob.strong_coef, prob.weak_coef
        ratio = cs / cw if (use_strong and use_weak) else 1.0
        scale = cw if use_weak else cs
        return (hs, ws, hw, ww), (hs.shape[1], hw.shape[1], hs.stride(0), ws.stride(0), hw.stride(0), ww.stride(0)), (
            ratio, scale, use_strong, use_weak)

    def _const(self, prob: Problem, cfg: "TritonBackend"):
        hs_k, hw_k = prob.hidden.shape[1], (prob.weak_hidden.shape[1] if prob.has_weak else prob.hidden.shape[1])
        return dict(
            EVEN_KS=hs_k % cfg.block_k == 0,
            EVEN_KW=hw_k % cfg.block_k == 0,
            DOT_PRECISION="ieee" if prob.hidden.dtype == torch.float32 else "tf32",
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    # --- Backend protocol --------------------------------------------------------------------------
    def forward_partials(self, prob: Problem) -> Partials:
        cfg = self._for_dtype(prob.hidden.dtype)
        n, vocab = prob.n, prob.vocab
        num_m = triton.cdiv(n, cfg.block_m)
        num_tiles = triton.cdiv(vocab, cfg.block_n)
        splits = cfg.splits or max(1, math.ceil(4 * cfg.sm_count / num_m))
        splits = min(splits, num_tiles)
        tiles_per_split = triton.cdiv(num_tiles, splits)
        splits = triton.cdiv(num_tiles, tiles_per_split)  # every split owns at least one real tile
        part = torch.empty(5, splits, n, dtype=torch.float32, device=prob.hidden.device)
        tensors, dims, (ratio, scale, use_strong, use_weak) = self._head_args(prob)
        mixed_lse_forward_kernel[(num_m * splits,)](
            *tensors, prob.labels, part, n, vocab, *dims, ratio, scale, num_m, tiles_per_split,
            USE_STRONG=use_strong, USE_WEAK=use_weak, **self._const(prob, cfg),
        )
        return merge_split_partials(part)

    def chunks(self, prob: Problem, n_rows: int) -> tuple[int, int]:
        if self.vocab_chunk is not None:
            return n_rows, min(prob.vocab, self.vocab_chunk)
        elem = prob.hidden.element_size()
        chunk = DEFAULT_WORKSPACE_BYTES // max(1, n_rows * elem)
        chunk = max(self.block_n, chunk // 256 * 256)  # whole tiles, cuBLAS-friendly K
        return n_rows, min(prob.vocab, chunk)

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        return prob.hidden.dtype

    def grad_logits(self, prob, rows, v0, v1, lse, grad_rows, out=None) -> torch.Tensor:
        cfg = self._for_dtype(prob.hidden.dtype)
        r = prob.n if rows is None else rows.shape[0]
        c = v1 - v0
        if out is None:
            out = torch.empty(r, c, dtype=prob.hidden.dtype, device=prob.hidden.device)
        assert out.shape == (r, c) and out.stride(1) == 1
        tensors, dims, (ratio, scale, use_strong, use_weak) = self._head_args(prob)
        grid = (triton.cdiv(r, cfg.block_m) * triton.cdiv(c, cfg.block_n),)
        mixed_grad_logits_kernel[grid](
            *tensors, prob.labels, prob.labels if rows is None else rows, lse.contiguous(), grad_rows.contiguous(), out,
            r, v0, c, *dims, out.stride(0), ratio, scale,
            HAS_ROWS=rows is not None, USE_STRONG=use_strong, USE_WEAK=use_weak, GROUP_M=cfg.group_m,
            **self._const(prob, cfg),
        )
        return out
