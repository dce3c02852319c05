"""The fast-mode gradient kernel: D (tile-offset logits from the forward) -> G in place, and its launcher.

No GEMM: z = tile_max + D is rebuilt from what the forward kernel stored (triton_forward.py, STORE_D), the row's
lse is known by now, and G = dL/dz_raw * G_SCALE (triton_logits.loss_grad) overwrites D in place, in the input
dtype. D is stored relative to its tile's maximum, so the entries that carry the gradient (z near the top)
keep the full fp16 precision; the target column uses the exact fp32 z_y kept by the forward instead, so
p_y - 1 never cancels against a rounded p_y.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_logits import loss_grad


@triton.jit
def fast_grad_kernel(
    d_ptr, g_ptr, mt_ptr, lse_ptr, zy_ptr, labels_ptr, gcoef_ptr, R, V, stride_d, stride_mt,
    softcap, z_loss, target_weight, uniform_weight, G_SCALE,
    SOFTCAP: tl.constexpr, HAS_Z_LOSS: tl.constexpr, FWD_BLOCK_N: tl.constexpr, OFFSETS_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < R
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < V
    mask = r_ok[:, None] & c_ok[None, :]
    r_off = r.to(tl.int64) if OFFSETS_64 else r
    offs = r_off[:, None] * stride_d + c[None, :]
    gcoef = tl.load(gcoef_ptr + r, mask=r_ok, other=0.0)
    d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mt = tl.load(mt_ptr + r_off[:, None] * stride_mt + (c // FWD_BLOCK_N)[None, :], mask=mask, other=0.0)
    lse = tl.load(lse_ptr + r, mask=r_ok, other=0.0)
    zy = tl.load(zy_ptr + r, mask=r_ok, other=0.0)
    labels = tl.load(labels_ptr + r, mask=r_ok, other=-1).to(tl.int32)
    is_target = c[None, :] == labels[:, None]
    z = tl.where(is_target, zy[:, None], mt + d)
    p = tl.exp(z - lse[:, None])
    g = loss_grad(z, p, is_target, lse, gcoef, gcoef, softcap, z_loss, target_weight, uniform_weight,
                  SOFTCAP, False, HAS_Z_LOSS)
    tl.store(g_ptr + offs, (g * G_SCALE).to(g_ptr.dtype.element_ty), mask=mask)


def launch_fast_grad(cfg, prob, mixing, grad_opts, d, g, mt, lse, zy, gcoef):
    """d (the forward's D) and g are two dtype views of one [rows, >= V] buffer; g is written in place."""
    rows = d.shape[0]
    block_m, block_n = cfg.fast_grad_block
    grid = (triton.cdiv(rows, block_m), triton.cdiv(prob.vocab, block_n))
    fast_grad_kernel[grid](
        d, g, mt, lse, zy, prob.labels, gcoef, rows, prob.vocab, d.stride(0), mt.stride(0),
        softcap=mixing["softcap"], SOFTCAP=mixing["SOFTCAP"], **grad_opts, FWD_BLOCK_N=cfg.block_n,
        OFFSETS_64=rows * d.stride(0) >= 2**31,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4,
    )
