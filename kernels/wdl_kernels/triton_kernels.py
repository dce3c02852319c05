"""Triton kernels: mixed-logit tiles folded into an online log-sum-exp (forward) or into dL/dz (backward).

Shapes: hidden_s [N, HS], weight_s [V, HS], hidden_w [N, HW], weight_w [V, HW]; all row-major.
A tile is BLOCK_M tokens x BLOCK_N vocabulary ids. Its mixed logits are accumulated in ONE fp32 register
tile: the strong K-loop, a rescale by lam / (1 - lam), the weak K-loop, a rescale by (1 - lam); so two heads
cost no extra registers over one (USE_STRONG / USE_WEAK drop a head whose coefficient is 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_BIG = -1.0e30  # finite initial running max (stats.py)


@triton.jit
def _head_dot(acc, h_ptr, w_ptr, rows, cols, K, stride_h, stride_w,
              BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc += h[rows, :K] @ w[cols, :K].T  (rows/cols already clamped in range)."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_h + offs_k[None, :]
    b_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_w + offs_k[:, None]
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_ok = k * BLOCK_K + offs_k < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    return acc


@triton.jit
def _mixed_tile(hs_ptr, ws_ptr, hw_ptr, ww_ptr, rows, cols, HS, HW,
                stride_hs, stride_ws, stride_hw, stride_ww, ratio, weak_scale,
                USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, EVEN_KS: tl.constexpr, EVEN_KW: tl.constexpr,
                DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of z = cs * h_s W_s^T + cw * h_w W_w^T, with ratio = cs / cw, weak_scale = cw.

    Single head (or cw == 0): z = cs * h_s W_s^T with the caller passing weak_scale = cs and USE_WEAK=False.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_STRONG:
        acc = _head_dot(acc, hs_ptr, ws_ptr, rows, cols, HS, stride_hs, stride_ws, BLOCK_K, EVEN_KS, DOT_PRECISION)
        if USE_WEAK:
            acc = acc * ratio
    if USE_WEAK:
        acc = _head_dot(acc, hw_ptr, ww_ptr, rows, cols, HW, stride_hw, stride_ww, BLOCK_K, EVEN_KW, DOT_PRECISION)
    return acc * weak_scale


@triton.jit
def mixed_lse_forward_kernel(
    hs_ptr, ws_ptr, hw_ptr, ww_ptr, labels_ptr, part_ptr,
    N, V, HS, HW, stride_hs, stride_ws, stride_hw, stride_ww,
    ratio, weak_scale, num_m_blocks, tiles_per_split,
    USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr, EVEN_KS: tl.constexpr, EVEN_KW: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: BLOCK_M rows x one vocabulary split. Writes partials (m, s, t, sumz, zy) to part[5, S, N].

    Programs with consecutive ids share the vocabulary split (same weight tiles at the same time: L2 reuse).
    """
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    split = pid // num_m_blocks
    num_splits = tl.num_programs(0) // num_m_blocks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)
    labels = tl.load(labels_ptr + rows)

    m = tl.full((BLOCK_M,), NEG_BIG, dtype=tl.float32)
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sumz = tl.zeros((BLOCK_M,), dtype=tl.float32)
    zy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tiles_per_split):
        cols = (split * tiles_per_split + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < V
        z = _mixed_tile(hs_ptr, ws_ptr, hw_ptr, ww_ptr, rows, tl.where(col_ok, cols, 0), HS, HW,
                        stride_hs, stride_ws, stride_hw, stride_ww, ratio, weak_scale,
                        USE_STRONG, USE_WEAK, EVEN_KS, EVEN_KW, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        d = z - m_new[:, None]
        e = tl.exp(d)  # 0 in masked columns
        t = alpha * (t + (m - m_new) * s) + tl.sum(e * tl.where(col_ok[None, :], d, 0.0), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        sumz += tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)
        zy += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        m = m_new

    plane = num_splits * N
    out = part_ptr + split * N + rows
    tl.store(out, m, mask=row_ok)
    tl.store(out + plane, s, mask=row_ok)
    tl.store(out + 2 * plane, t, mask=row_ok)
    tl.store(out + 3 * plane, sumz, mask=row_ok)
    tl.store(out + 4 * plane, zy, mask=row_ok)


@triton.jit
def mixed_grad_logits_kernel(
    hs_ptr, ws_ptr, hw_ptr, ww_ptr, labels_ptr, rows_ptr, lse_ptr, grow_ptr, g_ptr,
    R, v0, C, HS, HW, stride_hs, stride_ws, stride_hw, stride_ww, stride_g,
    ratio, weak_scale,
    HAS_ROWS: tl.constexpr, USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr,
    EVEN_KS: tl.constexpr, EVEN_KW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """G[r, c] = (softmax(z)[row_r, v0 + c] - [label == v0 + c]) * grow[r] for r < R, c < C.

    Row r is token rows_ptr[r] (HAS_ROWS; a compacted subset) or token r. lse/grow are indexed by r.
    Grouped tile order (GROUP_M row blocks per column sweep) keeps weight tiles hot in L2.
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
    c = tl.where(c_ok, c, 0)
    if HAS_ROWS:
        rows = tl.load(rows_ptr + r)
    else:
        rows = r
    lse = tl.load(lse_ptr + r)
    grow = tl.load(grow_ptr + r)
    labels = tl.load(labels_ptr + rows)
    z = _mixed_tile(hs_ptr, ws_ptr, hw_ptr, ww_ptr, rows, v0 + c, HS, HW,
                    stride_hs, stride_ws, stride_hw, stride_ww, ratio, weak_scale,
                    USE_STRONG, USE_WEAK, EVEN_KS, EVEN_KW, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    p = tl.exp(z - lse[:, None])
    g = (p - tl.where((v0 + c)[None, :] == labels[:, None], 1.0, 0.0)) * grow[:, None]
    out = g_ptr + r.to(tl.int64)[:, None] * stride_g + c[None, :]
    tl.store(out, g.to(g_ptr.dtype.element_ty), mask=r_ok[:, None] & c_ok[None, :])
