"""The lean-mode gradient kernel: recompute a tile of mixed logits and write G = dL/dz_raw for it, and its launcher.

G[r, c] = (gcoef[r] * dLoss_r/dz + lcoef[r] * p) * chain (triton_logits.loss_grad) * G_SCALE for rows r < R and
the chunk's columns v0 + c, c < C, stored in G's dtype. G_SCALE is a power of two that keeps fp16 G in its
normal range (the driver divides it out in fp32); the row coefficients are normalised to |.| <= 1, so G never
carries the 1/N of a mean and cannot underflow the way a pre-scaled G would. A row block whose coefficients
are all zero (ignored labels) writes zeros without computing its logits.

Grouped tile order (GROUP_M row blocks per sweep over the chunk's columns) keeps weight tiles hot in L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_logits import loss_grad, mixed_logits_tile


@triton.jit
def mixed_ce_grad_kernel(
    hs_desc, ws_desc, hw_desc, ww_desc, bias_ptr, labels_ptr, lse_ptr, gcoef_ptr, lcoef_ptr, g_ptr,
    R, V, v0, C, HS, HW, stride_g, ratio, scale, softcap, z_loss, target_weight, uniform_weight, G_SCALE,
    USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_LSE_GRAD: tl.constexpr, HAS_Z_LOSS: tl.constexpr, DOT_PRECISION: tl.constexpr, OFFSETS_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(R, BLOCK_M)
    num_pid_n = tl.cdiv(C, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < R
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    gcoef = tl.load(gcoef_ptr + r, mask=r_ok, other=0.0)
    active = tl.abs(gcoef)
    if HAS_LSE_GRAD:
        lcoef = tl.load(lcoef_ptr + r, mask=r_ok, other=0.0)
        active += tl.abs(lcoef)
    else:
        lcoef = gcoef
    r_off = r.to(tl.int64) if OFFSETS_64 else r  # 32-bit addresses when the workspace allows: fewer registers
    out = g_ptr + r_off[:, None] * stride_g + c[None, :]
    mask = r_ok[:, None] & c_ok[None, :]
    if tl.max(active, axis=0) == 0.0:
        tl.store(out, tl.zeros((BLOCK_M, BLOCK_N), dtype=g_ptr.dtype.element_ty), mask=mask)
    else:
        lse = tl.load(lse_ptr + r, mask=r_ok, other=0.0)
        labels = tl.load(labels_ptr + r, mask=r_ok, other=-1).to(tl.int32)
        z = mixed_logits_tile(hs_desc, ws_desc, hw_desc, ww_desc, bias_ptr, pid_m * BLOCK_M, v0 + pid_n * BLOCK_N,
                              V, HS, HW, ratio, scale, softcap, USE_STRONG, USE_WEAK, HAS_BIAS, SOFTCAP,
                              DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        p = tl.exp(z - lse[:, None])
        is_target = (v0 + c)[None, :] == labels[:, None]
        g = loss_grad(z, p, is_target, lse, gcoef, lcoef, softcap, z_loss, target_weight, uniform_weight,
                      SOFTCAP, HAS_LSE_GRAD, HAS_Z_LOSS)
        tl.store(out, (g * G_SCALE).to(g_ptr.dtype.element_ty), mask=mask)


def launch_grad(cfg, prob, descriptors, mixing, grad_opts, v0: int, v1: int, lse, gcoef, lcoef, out):
    """G for all rows of `prob` and columns [v0, v1) into out [N, v1 - v0] (unit column stride)."""
    r, c = prob.n, v1 - v0
    assert out.shape == (r, c) and out.stride(1) == 1
    grid = (triton.cdiv(r, cfg.block_m) * triton.cdiv(c, cfg.block_n),)
    bias = prob.bias if prob.bias is not None else lse
    mixed_ce_grad_kernel[grid](
        *descriptors, bias, prob.labels, lse, gcoef, lcoef if lcoef is not None else gcoef, out,
        r, prob.vocab, v0, c, **cfg.dims(prob), stride_g=out.stride(0), **mixing, **grad_opts,
        HAS_LSE_GRAD=lcoef is not None, OFFSETS_64=r * out.stride(0) >= 2**31, GROUP_M=cfg.group_m,
        **cfg.const(prob, "grad"),
    )
    return out
