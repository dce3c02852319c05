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
from .triton_kernels import mixed_grad_logits_kernel, mixed_lse_forward_kernel, row_dots_kernel

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
    rowdot_block_m: int = 16  # row_dots_kernel (target logit and logit sum): 16 x 128 is spill-free on sm_90
    rowdot_block_k: int = 128
    interpret: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> "TritonBackend":
        if device.type != "cuda":  # the interpreter: small tiles keep numpy work per program small
            return cls(block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=1, rowdot_block_k=64,
                       interpret=True)
        return cls(sm_count=_sm_count(device.index or 0))

    def _for_dtype(self, dtype: torch.dtype) -> "TritonBackend":
        # fp32 uses exact (IEEE, FMA) dots. tl.dot needs K >= 16 before Triton 3.7 (the GPU image has 3.6);
        # 64x64x16 over 4 warps, 2 stages compiles without spills on sm_90 with Triton 3.6 and 3.9
        # (scripts/check_sm90.py; 8 warps or 3 stages spill in one version or the other).
        if dtype == torch.float32 and not self.interpret:
            return replace(self, block_m=64, block_n=64, block_k=16, num_warps=4, num_stages=2)
        return self

    # --- shared launch arguments -------------------------------------------------------------------
    def unsupported_reason(self, tensors) -> str | None:
        """Why TMA descriptors cannot address these [rows, K] tensors (None when they can)."""
        for name, x in tensors:
            if x is None:
                continue
            if x.stride(1) != 1 or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
                return (f"{name} (shape {tuple(x.shape)}, {x.dtype}) needs 16-byte aligned rows for TMA; "
                        "pad the hidden size to a multiple of 16 bytes (8 bf16/fp16 values, 4 fp32) "
                        "or use impl='torch'")
        return None

    def _descriptors(self, prob: Problem, cfg: "TritonBackend"):
        from triton.tools.tensor_descriptor import TensorDescriptor

        def desc(x, rows):
            return TensorDescriptor.from_tensor(x, [rows, cfg.block_k])

        hs = desc(prob.hidden, cfg.block_m)
        ws = desc(prob.weight, cfg.block_n)
        if prob.has_weak:
            hw, ww = desc(prob.weak_hidden, cfg.block_m), desc(prob.weak_weight, cfg.block_n)
        else:
            hw, ww = hs, ws
        return hs, ws, hw, ww

    @staticmethod
    def _mixing(prob: Problem) -> dict:
        use_strong, use_weak = prob.use_strong, prob.use_weak
        cs, cw = prob.strong_coef, prob.weak_coef
        return dict(
            ratio=cs / cw if (use_strong and use_weak) else 1.0,
            scale=cw if use_weak else cs,
            USE_STRONG=use_strong,
            USE_WEAK=use_weak,
        )

    def _const(self, prob: Problem, cfg: "TritonBackend") -> dict:
        return dict(
            DOT_PRECISION="ieee" if prob.hidden.dtype == torch.float32 else "tf32",
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    def _dims(self, prob: Problem) -> dict:
        return dict(HS=prob.hidden.shape[1], HW=prob.weak_hidden.shape[1] if prob.has_weak else prob.hidden.shape[1])

    # --- Backend protocol --------------------------------------------------------------------------
    def forward_partials(self, prob: Problem, ignore_index: int, with_stats: bool) -> Partials:
        cfg = self._for_dtype(prob.hidden.dtype)
        n, vocab = prob.n, prob.vocab
        num_m = triton.cdiv(n, cfg.block_m)
        num_tiles = triton.cdiv(vocab, cfg.block_n)
        splits = cfg.splits or max(1, math.ceil(4 * cfg.sm_count / num_m))
        splits = min(splits, num_tiles)
        tiles_per_split = triton.cdiv(num_tiles, splits)
        splits = triton.cdiv(num_tiles, tiles_per_split)  # every split owns at least one real tile
        dev = prob.hidden.device
        part = torch.empty(3, splits, n, dtype=torch.float32, device=dev)
        mixed_lse_forward_kernel[(num_m * splits,)](
            *self._descriptors(prob, cfg), part, n, vocab, **self._dims(prob), **self._mixing(prob),
            num_m_blocks=num_m, tiles_per_split=tiles_per_split, WITH_ENTROPY=with_stats, **self._const(prob, cfg),
        )
        zy = torch.zeros(n, dtype=torch.float32, device=dev)
        sumz = torch.zeros(n, dtype=torch.float32, device=dev)
        heads = []
        if prob.use_strong:
            heads.append((prob.hidden, prob.weight, prob.strong_coef))
        if prob.use_weak:
            heads.append((prob.weak_hidden, prob.weak_weight, prob.weak_coef))
        for h, w, coef in heads:
            # sum_j z_j = h . (sum_j W_j): the margin's logit sum without touching the tile loop
            colsum = w.sum(0, dtype=torch.float32) if with_stats else zy
            row_dots_kernel[(triton.cdiv(n, self.rowdot_block_m),)](
                h, w, colsum, prob.labels, zy, sumz, n, h.shape[1], h.stride(0), w.stride(0), ignore_index, coef,
                WITH_SUM=with_stats, BLOCK_M=self.rowdot_block_m, BLOCK_K=self.rowdot_block_k, num_warps=4,
            )
        return merge_split_partials(part, sumz, zy)

    def chunks(self, prob: Problem, n_rows: int) -> tuple[int, int]:
        if self.vocab_chunk is not None:
            return n_rows, min(prob.vocab, self.vocab_chunk)
        elem = prob.hidden.element_size()
        chunk = DEFAULT_WORKSPACE_BYTES // max(1, n_rows * elem)
        chunk = max(self.block_n, chunk // 256 * 256)  # whole tiles, cuBLAS-friendly K
        return n_rows, min(prob.vocab, chunk)

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        return prob.hidden.dtype

    def grad_logits(self, prob, r0, r1, v0, v1, lse, grad_rows, out=None) -> torch.Tensor:
        cfg = self._for_dtype(prob.hidden.dtype)
        if (r0, r1) != (0, prob.n):  # the driver gives this backend one token chunk (chunks() below)
            raise NotImplementedError("TritonBackend.grad_logits works on all rows of the (compacted) problem")
        r, c = r1 - r0, v1 - v0
        if out is None:
            out = torch.empty(r, c, dtype=prob.hidden.dtype, device=prob.hidden.device)
        assert out.shape == (r, c) and out.stride(1) == 1
        grid = (triton.cdiv(r, cfg.block_m) * triton.cdiv(c, cfg.block_n),)
        mixed_grad_logits_kernel[grid](
            *self._descriptors(prob, cfg), prob.labels, lse.contiguous(), grad_rows.contiguous(), out,
            r, v0, c, **self._dims(prob), stride_g=out.stride(0), **self._mixing(prob), GROUP_M=cfg.group_m,
            **self._const(prob, cfg),
        )
        return out
