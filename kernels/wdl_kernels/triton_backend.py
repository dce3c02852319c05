"""Triton backend: tile configurations, grid planning and the launches of the three kernels.

Tile configurations are fixed per (device, dtype), never autotuned at run time: an autotuner that picks by
timing could pick differently in two runs and change the reduction order, i.e. the bits. The backward GEMMs
go to cuBLAS through gemm.py (lean.py, fast.py).

Forward grid: the vocabulary of each BLOCK_M row block is cut into splits; the split count minimises
waves x tiles-per-split over the GPU's resident-program slots (SMs x CTAs per SM from the compiled kernel's
registers and shared memory), so the last wave is not left mostly idle.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace

import torch
import triton

from .problem import Problem
from .stats import Partials, merge_split_partials
from .triton_fast_grad import launch_fast_grad
from .triton_forward import launch_forward, mixed_ce_forward_kernel
from .triton_grad import launch_grad

_MiB = 1 << 20


@functools.lru_cache(maxsize=None)
def _device_props(index: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    return {
        "sm_count": props.multi_processor_count,
        "regs_per_sm": getattr(props, "regs_per_multiprocessor", 65536),
        "smem_per_sm": getattr(props, "shared_memory_per_multiprocessor", 228 * 1024),
        "max_threads_per_sm": getattr(props, "max_threads_per_multi_processor", 2048),
    }


def ctas_per_sm(n_regs: int, smem: int, num_warps: int, props: dict) -> int:
    """Resident programs per SM from registers, shared memory and threads (at least 1)."""
    threads = 32 * num_warps
    by_regs = props["regs_per_sm"] // max(1, n_regs * threads)
    by_smem = props["smem_per_sm"] // smem if smem else 32
    by_threads = props["max_threads_per_sm"] // threads
    return max(1, min(by_regs, by_smem, by_threads))


@functools.lru_cache(maxsize=4096)
def plan_splits(num_m: int, num_tiles: int, slots: int, min_tiles: int = 2) -> tuple[int, int]:
    """(splits, tiles_per_split) minimising the forward's time in tile units: waves x (tiles per program + a
    half-tile of per-program overhead). Ties go to fewer splits (less to merge)."""
    best = None
    for tps in range(num_tiles, 0, -1):
        if tps < min(min_tiles, num_tiles):
            break
        splits = math.ceil(num_tiles / tps)
        if math.ceil(num_tiles / splits) != tps:  # the same split count with fewer tiles each is better
            continue
        waves = math.ceil(num_m * splits / slots)
        cost = waves * (tps + 0.5)
        if best is None or cost < best[0]:
            best = (cost, splits, tps)
    return best[1], best[2]


@dataclass(frozen=True)
class TritonBackend:
    name: str = "triton"
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3
    group_m: int = 16
    # Register cap of the plain lean forward (16-bit, no bias/softcap): 128 x 256 threads lets 2 programs share
    # an SM (98 KB of shared memory each) and compiles spill-free; uncapped, ptxas takes up to 255 registers.
    # The other variants spill under 128, so they run uncapped at 1 program per SM (scripts/check_sm90.py).
    maxnreg: int | None = 128
    splits: int | None = None  # forward vocabulary splits; None = planned from the GPU's slots
    sm_count: int = 132
    ctas: int | None = None  # resident forward programs per SM; None = from the compiled kernel
    # lean backward: G workspace rows x chunk; the chunk never drops below min_vocab_chunk, so the number of
    # chunks (and the fp32 dh read-modify-write traffic per token) is bounded: traffic stays linear in N.
    lean_workspace_bytes: int = 96 * _MiB
    min_vocab_chunk: int = 2048
    vocab_chunk: int | None = None
    # fast mode: one [token_chunk, V] workspace; a batch that fits whole needs no fp32 dW accumulators
    fast_workspace_bytes: int = 1536 * _MiB
    fast_multi_chunk_rows: int = 4096
    token_chunk: int | None = None
    fast_grad_block: tuple[int, int] = (32, 128)
    interpret: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> "TritonBackend":
        if device.type != "cuda":  # the interpreter: small tiles keep numpy work per program small
            return cls(block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=1, group_m=4,
                       fast_grad_block=(32, 64), interpret=True)
        return cls(sm_count=_device_props(device.index or 0)["sm_count"])

    def cfg(self, dtype: torch.dtype, store_d: bool = False) -> "TritonBackend":
        # fp32 uses exact (IEEE, FMA) dots. tl.dot needs K >= 16 before Triton 3.7; 64x64x16 over 4 warps,
        # 2 stages compiles without spills on sm_90 with Triton 3.6 and 3.9 (scripts/check_sm90.py), except the
        # fast forward (it also stores the tile), which needs 1 stage.
        if dtype == torch.float32 and not self.interpret:
            return replace(self, block_m=64, block_n=64, block_k=16, num_warps=4, num_stages=1 if store_d else 2,
                           maxnreg=None)
        return self

    # --- launch arguments --------------------------------------------------------------------------
    @staticmethod
    def unsupported_reason(tensors) -> str | None:
        """Why TMA descriptors cannot address these [rows, K] tensors (None when they can)."""
        for name, x in tensors:
            if x is None:
                continue
            if x.stride(1) != 1 or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
                return (f"{name} (shape {tuple(x.shape)}, {x.dtype}) needs 16-byte aligned rows for TMA; "
                        "pad the hidden size to a multiple of 16 bytes (8 bf16/fp16 values, 4 fp32) "
                        "or use impl='torch'")
        return None

    def descriptors(self, prob: Problem):
        from triton.tools.tensor_descriptor import TensorDescriptor

        def desc(x, rows):
            return TensorDescriptor.from_tensor(x, [rows, self.block_k])

        hs, ws = desc(prob.hidden, self.block_m), desc(prob.weight, self.block_n)
        if prob.has_weak:
            return hs, ws, desc(prob.weak_hidden, self.block_m), desc(prob.weak_weight, self.block_n)
        return hs, ws, hs, ws

    @staticmethod
    def mixing(prob: Problem) -> dict:
        use_strong, use_weak = prob.use_strong, prob.use_weak
        cs, cw, temp = prob.strong_coef, prob.weak_coef, prob.opts.temperature
        return dict(
            ratio=cs / cw if (use_strong and use_weak) else 1.0,
            scale=(cw if use_weak else cs) / temp,
            softcap=prob.opts.softcap if prob.opts.has_softcap else 1.0,
            USE_STRONG=use_strong, USE_WEAK=use_weak, HAS_BIAS=prob.bias is not None,
            SOFTCAP=prob.opts.has_softcap,
        )

    def grad_opts(self, prob: Problem) -> dict:
        eps = prob.opts.label_smoothing
        return dict(z_loss=prob.opts.z_loss, target_weight=1.0 - eps, uniform_weight=eps / prob.vocab,
                    G_SCALE=self.grad_scale(prob), HAS_Z_LOSS=prob.opts.z_loss != 0.0)

    def register_cap(self, kernel: str, dtype: torch.dtype, has_options: bool, store_d: bool) -> int | None:
        """maxnreg for a kernel variant ("forward" or "grad"), or None for ptxas's choice."""
        if kernel == "forward" and dtype != torch.float32 and not has_options and not store_d:
            return self.maxnreg
        return None

    def const(self, prob: Problem, kernel: str, store_d: bool = False) -> dict:
        has_options = prob.bias is not None or prob.opts.has_softcap
        cap = None if self.interpret else self.register_cap(kernel, prob.hidden.dtype, has_options, store_d)
        return dict(DOT_PRECISION="ieee" if prob.hidden.dtype == torch.float32 else "tf32",
                    BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                    num_warps=self.num_warps, num_stages=self.num_stages, **({} if cap is None else {"maxnreg": cap}))

    @staticmethod
    def dims(prob: Problem) -> dict:
        hs = prob.hidden.shape[1]
        return dict(HS=hs, HW=prob.weak_hidden.shape[1] if prob.has_weak else hs)

    # --- grid planning -----------------------------------------------------------------------------
    def _slots(self, prob: Problem, descriptors, mixing, with_stats: bool, store_d: bool) -> int:
        if self.interpret:
            return self.sm_count
        ctas = self.ctas or _forward_ctas_per_sm(self, prob, descriptors, mixing, with_stats, store_d)
        return self.sm_count * ctas

    def _splits(self, prob, descriptors, mixing, with_stats, store_d) -> tuple[int, int]:
        num_m = triton.cdiv(prob.n, self.block_m)
        num_tiles = triton.cdiv(prob.vocab, self.block_n)
        if self.splits is not None:
            tps = triton.cdiv(num_tiles, min(self.splits, num_tiles))
            return triton.cdiv(num_tiles, tps), tps
        return plan_splits(num_m, num_tiles, self._slots(prob, descriptors, mixing, with_stats, store_d))

    # --- Backend protocol --------------------------------------------------------------------------
    def grad_dtype(self, prob: Problem) -> torch.dtype:
        return prob.hidden.dtype

    def grad_scale(self, prob: Problem) -> float:
        # fp16 G = p * 2^12: softmax entries down to ~1.5e-8 stay normal numbers, |G| <= 2^12 leaves room for
        # the z-loss factor; bf16/fp32 have fp32's exponent range.
        return 4096.0 if prob.hidden.dtype == torch.float16 else 1.0

    def lean_chunks(self, prob: Problem) -> tuple[int, int]:
        if self.vocab_chunk is not None:
            return prob.n, min(prob.vocab, self.vocab_chunk)
        elem = prob.hidden.element_size()
        chunk = max(self.min_vocab_chunk, self.lean_workspace_bytes // max(1, prob.n * elem))
        chunk = max(self.block_n, chunk // 256 * 256)  # whole tiles, cuBLAS-friendly K
        return prob.n, min(prob.vocab, chunk)

    def fast_token_chunk(self, prob: Problem) -> int:
        if self.token_chunk is not None:
            return max(1, min(prob.n, self.token_chunk))
        rows = self.fast_workspace_bytes // (prob.vocab * _d_dtype(prob.hidden.dtype).itemsize)
        if rows >= prob.n:
            return prob.n  # the whole batch in one chunk: dW straight from one GEMM, no fp32 accumulators
        return max(self.block_m, min(rows, self.fast_multi_chunk_rows) // self.block_m * self.block_m)

    def forward_partials(self, prob: Problem, with_stats: bool) -> Partials:
        cfg = self.cfg(prob.hidden.dtype)
        descriptors, mixing = cfg.descriptors(prob), cfg.mixing(prob)
        splits, tps = cfg._splits(prob, descriptors, mixing, with_stats, False)
        part = torch.empty(5, splits, prob.n, dtype=torch.float32, device=prob.hidden.device)
        launch_forward(cfg, prob, descriptors, mixing, splits, tps, part, with_stats)
        return merge_split_partials(part)

    def grad_block(self, prob, r0, r1, v0, v1, lse, gcoef, lcoef, out=None) -> torch.Tensor:
        if (r0, r1) != (0, prob.n):  # lean_chunks() gives this backend one token chunk
            raise NotImplementedError("TritonBackend.grad_block works on all rows of the problem")
        cfg = self.cfg(prob.hidden.dtype)
        if out is None:
            out = torch.empty(prob.n, v1 - v0, dtype=prob.hidden.dtype, device=prob.hidden.device)
        return launch_grad(cfg, prob, cfg.descriptors(prob), cfg.mixing(prob), cfg.grad_opts(prob), v0, v1,
                           lse, gcoef, lcoef, out)

    def new_fast_workspace(self, prob: Problem, rows: int) -> dict:
        cfg = self.cfg(prob.hidden.dtype)
        d_dtype = _d_dtype(prob.hidden.dtype)
        padded = triton.cdiv(prob.vocab, 8) * 8  # 16-byte aligned rows for cuBLAS
        buf = torch.empty(rows, padded, dtype=d_dtype, device=prob.hidden.device)
        num_tiles = triton.cdiv(prob.vocab, cfg.block_n)
        return {"d": buf, "g": buf.view(prob.hidden.dtype),
                "mt": torch.empty(rows, num_tiles, dtype=torch.float32, device=prob.hidden.device)}

    def fast_block(self, prob: Problem, r0: int, r1: int, with_stats: bool, workspace: dict
                   ) -> tuple[Partials, torch.Tensor]:
        cfg = self.cfg(prob.hidden.dtype, store_d=True)
        sub = prob.rows(r0, r1)
        rows = r1 - r0
        d, g, mt = workspace["d"][:rows], workspace["g"][:rows], workspace["mt"][:rows]
        descriptors, mixing = cfg.descriptors(sub), cfg.mixing(sub)
        splits, tps = cfg._splits(sub, descriptors, mixing, with_stats, True)
        part = torch.empty(5, splits, rows, dtype=torch.float32, device=prob.hidden.device)
        launch_forward(cfg, sub, descriptors, mixing, splits, tps, part, with_stats, d=d, mt=mt)
        partials = merge_split_partials(part)
        lse = partials.m + torch.log(partials.s)
        gcoef = (sub.labels != prob.opts.ignore_index).to(torch.float32)
        launch_fast_grad(cfg, sub, mixing, cfg.grad_opts(sub), d, g, mt, lse, partials.zy, gcoef)
        return partials, g[:, : prob.vocab]


def _d_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage of fast mode's tile-offset logits: fp16 for 16-bit inputs (2 bytes, like G), else fp32."""
    return torch.float32 if dtype == torch.float32 else torch.float16


_OCCUPANCY: dict = {}


def _forward_ctas_per_sm(cfg: TritonBackend, prob: Problem, descriptors, mixing, with_stats, store_d) -> int:
    """Resident forward programs per SM, from the compiled variant's registers and shared memory (cached).
    Falls back to 1 (with a warning) when this Triton cannot report them."""
    flags = tuple(sorted((k, v) for k, v in mixing.items() if k.isupper()))  # the constexprs, not lam's values
    key = (prob.hidden.device.index, prob.hidden.dtype, flags, with_stats, store_d,
           cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages)
    if key not in _OCCUPANCY:
        part = torch.empty(5, 1, prob.n, dtype=torch.float32, device=prob.hidden.device)
        try:
            bias = prob.bias if prob.bias is not None else part
            compiled = mixed_ce_forward_kernel.warmup(
                *descriptors, bias, prob.labels, part, part, part, prob.n, prob.vocab, **cfg.dims(prob), **mixing,
                num_m_blocks=1, num_splits=1, tiles_per_split=1, stride_d=0, stride_mt=0,
                WITH_ENTROPY=with_stats, STORE_D=store_d, OFFSETS_64=False, GROUP_M=cfg.group_m,
                **cfg.const(prob, "forward", store_d), grid=(1,))
            compiled._init_handles()
            ctas = ctas_per_sm(compiled.n_regs, compiled.metadata.shared, cfg.num_warps,
                               _device_props(prob.hidden.device.index or 0))
        except Exception as e:  # noqa: BLE001 - any failure here only costs wave efficiency
            warnings.warn(f"wdl_kernels: could not read the forward kernel's occupancy ({e!r}); planning the "
                          "grid for 1 program per SM", stacklevel=2)
            ctas = 1
        _OCCUPANCY[key] = ctas
    return _OCCUPANCY[key]


def occupancy_report() -> dict:
    """Programs per SM found for each compiled forward variant so far (benchmarks record it)."""
    return {str(k[1:2] + k[3:5]): v for k, v in _OCCUPANCY.items()}
