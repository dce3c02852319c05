"""Triton kernels: mixed-logit tiles folded into an online log-sum-exp (forward) or into dL/dz (backward).

Shapes: hidden_s [N, HS], weight_s [V, HS], hidden_w [N, HW], weight_w [V, HW]; all row-major.
A tile is BLOCK_M tokens x BLOCK_N vocabulary ids. Operands are read through TMA tensor descriptors (Hopper:
async bulk copies, multi-stage pipelined, no per-element address registers; zero fill out of range, so ragged
N, V and H need no masks). The tile's mixed logits are accumulated in ONE fp32 register tile: the strong
K-loop, a rescale by lam / (1 - lam), the weak K-loop, a rescale by (1 - lam); two heads cost no registers
over one (USE_STRONG / USE_WEAK drop a head whose coefficient is 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_BIG = tl.constexpr(-1.0e30)  # finite initial running max (stats.py)


@triton.jit
def _mixed_tile(hs_desc, ws_desc, hw_desc, ww_desc, row0, col0, HS, HW, ratio, scale,
                USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of z at (row0, col0): z = cs h_s W_s^T + cw h_w W_w^T.

    Operands arrive by TMA (tensor descriptors); out-of-range rows/cols/K read as zeros. With both heads the
    caller passes ratio = cs / cw and scale = cw (one accumulator for both GEMMs); with one head, scale = its
    coefficient and ratio is unused.
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
    return acc * scale


@triton.jit
def mixed_lse_forward_kernel(
    hs_desc, ws_desc, hw_desc, ww_desc, part_ptr,
    N, V, HS, HW, ratio, scale, num_m_blocks, tiles_per_split,
    WITH_ENTROPY: tl.constexpr, USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: BLOCK_M rows x one vocabulary split. Writes (m, s, t) to part[3, S, N] (stats.py).

    Only the running max, the exp-sum and (WITH_ENTROPY) the entropy sum live in the loop; the target logit
    and the logit sum are linear in h and come from `row_dots_kernel`, keeping registers for the GEMM tile.
    Programs with consecutive ids share the vocabulary split (the same weight tiles at once: L2 reuse).
    """
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    split = pid // num_m_blocks
    num_splits = tl.num_programs(0) // num_m_blocks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N

    m = tl.full((BLOCK_M,), NEG_BIG, dtype=tl.float32)
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tiles_per_split):
        col0 = (split * tiles_per_split + i) * BLOCK_N
        col_ok = col0 + tl.arange(0, BLOCK_N) < V
        z = _mixed_tile(hs_desc, ws_desc, hw_desc, ww_desc, pid_m * BLOCK_M, col0, HS, HW, ratio, scale,
                        USE_STRONG, USE_WEAK, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        d = z - m_new[:, None]  # -inf in masked columns
        e = tl.exp(d)  # 0 there
        if WITH_ENTROPY:
            # e * max(d, NEG_BIG): 0 * finite in masked columns instead of 0 * -inf = NaN
            t = alpha * (t + (m - m_new) * s) + tl.sum(e * tl.maximum(d, NEG_BIG), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new

    plane = num_splits * N
    out = part_ptr + split * N + rows
    tl.store(out, m, mask=row_ok)
    tl.store(out + plane, s, mask=row_ok)
    tl.store(out + 2 * plane, t, mask=row_ok)


@triton.jit
def row_dots_kernel(
    h_ptr, w_ptr, colsum_ptr, labels_ptr, zy_ptr, sumz_ptr, N, K, stride_h, stride_w, ignore_index, coef,
    WITH_SUM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """zy[r] += coef * h[r] . w[label[r]]   (0 for ignored rows)   and, WITH_SUM, sumz[r] += coef * h[r] . colsum.

    One head per launch (accumulating into zy/sumz), fp32 products; cheap next to the tile GEMMs (N x K).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)
    labels = tl.load(labels_ptr + rows)
    valid = labels != ignore_index
    labels = tl.where(valid, labels, 0)
    offs_k = tl.arange(0, BLOCK_K)
    acc_y = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + offs_k < K
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * stride_h + (k0 + offs_k)[None, :], mask=k_ok[None, :],
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + labels.to(tl.int64)[:, None] * stride_w + (k0 + offs_k)[None, :], mask=k_ok[None, :],
                    other=0.0).to(tl.float32)
        acc_y += tl.sum(h * w, axis=1)
        if WITH_SUM:
            c = tl.load(colsum_ptr + k0 + offs_k, mask=k_ok, other=0.0)
            acc_s += tl.sum(h * c[None, :], axis=1)
    zy = tl.load(zy_ptr + rows, mask=row_ok, other=0.0)
    tl.store(zy_ptr + rows, zy + coef * tl.where(valid, acc_y, 0.0), mask=row_ok)
    if WITH_SUM:
        sz = tl.load(sumz_ptr + rows, mask=row_ok, other=0.0)
        tl.store(sumz_ptr + rows, sz + coef * acc_s, mask=row_ok)


@triton.jit
def mixed_grad_logits_kernel(
    hs_desc, ws_desc, hw_desc, ww_desc, labels_ptr, lse_ptr, grow_ptr, g_ptr,
    R, v0, C, HS, HW, stride_g, ratio, scale,
    USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """G[r, c] = (softmax(z)[r, v0 + c] - [label_r == v0 + c]) * grow[r] for r < R, c < C; G in g_ptr's dtype.

    Grouped tile order (GROUP_M row blocks per sweep over the chunk's columns) keeps weight tiles hot in L2.
    """
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
    r = tl.where(r_ok, r, 0)
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    lse = tl.load(lse_ptr + r)
    grow = tl.load(grow_ptr + r)
    labels = tl.load(labels_ptr + r)
    z = _mixed_tile(hs_desc, ws_desc, hw_desc, ww_desc, pid_m * BLOCK_M, v0 + pid_n * BLOCK_N, HS, HW, ratio, scale,
                    USE_STRONG, USE_WEAK, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    p = tl.exp(z - lse[:, None])
    g = (p - tl.where((v0 + c)[None, :] == labels[:, None], 1.0, 0.0)) * grow[:, None]
    out = g_ptr + r.to(tl.int64)[:, None] * stride_g + c[None, :]
    tl.store(out, g.to(g_ptr.dtype.element_ty), mask=r_ok[:, None] & c_ok[None, :])
