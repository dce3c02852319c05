"""Triton device functions shared by the kernels: one tile of mixed logits, and the loss gradient on a tile.

Shapes: hidden_s [N, HS], weight_s [V, HS], hidden_w [N, HW], weight_w [V, HW]; all row-major. A tile is
BLOCK_M tokens x BLOCK_N vocabulary ids. Operands are read through TMA tensor descriptors (Hopper: async bulk
copies, multi-stage pipelined, no per-element address registers; zero fill out of range, so ragged N, V and H
need no masks). Both heads' logits accumulate in ONE fp32 register tile (strong K-loop, rescale by
cs / cw, weak K-loop, rescale by cw / T), so two heads cost no registers over one and the logits are never
rounded before they are mixed. The options (options.py) follow in fp32: bias, temperature, softcap.
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_BIG = tl.constexpr(-1.0e30)  # finite initial running max (stats.py)


@triton.jit
def tanh(x):
    """tanh in fp32 from exp alone (the interpreter has no libdevice): odd Taylor series to x^9 below
    |x| = 0.25 (relative error < 1e-8), else 1 - 2 / (exp(2|x|) + 1), whose limits are exactly +-1."""
    a = tl.abs(x)
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    x2 = x * x
    small = a * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(x < 0, -1.0, 1.0) * tl.where(a < 0.25, small, big)


@triton.jit
def mixed_logits_tile(hs_desc, ws_desc, hw_desc, ww_desc, bias_ptr, row0, col0, V, HS, HW, ratio, scale, softcap,
                      USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of z at (row0, col0), options applied; columns >= V are garbage (mask them).

    With both heads the caller passes ratio = cs / cw and scale = cw / T; with one head scale = coef / T.
    bias_ptr holds the mixed bias already divided by T.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_STRONG:
        for k in range(0, tl.cdiv(HS, BLOCK_K)):
            a = hs_desc.load([row0, k * BLOCK_K])
            b = ws_desc.load([col0, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
        if USE_WEAK:
            acc = acc * ratio
    if USE_WEAK:
        for k in range(0, tl.cdiv(HW, BLOCK_K)):
            a = hw_desc.load([row0, k * BLOCK_K])
            b = ww_desc.load([col0, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
    z = acc * scale
    if HAS_BIAS:
        cols = col0 + tl.arange(0, BLOCK_N)
        z += tl.load(bias_ptr + cols, mask=cols < V, other=0.0)[None, :]
    if SOFTCAP:
        z = softcap * tanh(z / softcap)
    return z


@triton.jit
def loss_grad(z, p, is_target, lse, gcoef, lcoef, softcap, z_loss, target_weight, uniform_weight,
              SOFTCAP: tl.constexpr, HAS_LSE_GRAD: tl.constexpr, HAS_Z_LOSS: tl.constexpr):
    """G = gcoef * dLoss/dz + lcoef * p, chained through the softcap (options.py), fp32, before the 1/T.

    target_weight = 1 - label_smoothing, uniform_weight = label_smoothing / V; row vectors are [BLOCK_M].
    """
    q = p
    if HAS_Z_LOSS:
        q = p * (1.0 + 2.0 * z_loss * lse)[:, None]
    g = (q - tl.where(is_target, target_weight, 0.0) - uniform_weight) * gcoef[:, None]
    if HAS_LSE_GRAD:
        g += p * lcoef[:, None]
    if SOFTCAP:
        t = z / softcap
        g = g * (1.0 - t * t)
    return g
