"""The forward kernel: mixed-logit tiles folded into online-softmax partials, and its launcher.

One program owns BLOCK_M rows and one vocabulary split (a run of consecutive BLOCK_N tiles). Per row it keeps
the running max m, the exp-sum s, the entropy sum t (WITH_ENTROPY), the logit sum and the target logit, and
writes them to part[5, S, N] (stats.py); the splits are merged in torch. Fast mode (STORE_D) also writes each
tile's logits as D = z - max_tile(z) (fp16 for 16-bit inputs, fp32 for fp32) and the tile maxima, so the
gradient pass (triton_fast_grad.py) needs no second logits GEMM.

Program order: GROUP_M row blocks sweep all splits before the next group starts, so the programs resident at
once share a few hidden-state blocks and a few weight tiles (L2 reuse of both operands).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_logits import NEG_BIG, mixed_logits_tile


@triton.jit
def mixed_ce_forward_kernel(
    hs_desc, ws_desc, hw_desc, ww_desc, bias_ptr, labels_ptr, part_ptr, d_ptr, mt_ptr,
    N, V, HS, HW, ratio, scale, softcap, num_m_blocks, num_splits, tiles_per_split, stride_d, stride_mt,
    WITH_ENTROPY: tl.constexpr, STORE_D: tl.constexpr, USE_STRONG: tl.constexpr, USE_WEAK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, OFFSETS_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    per_group = GROUP_M * num_splits
    first_m = (pid // per_group) * GROUP_M
    group_size = min(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    split = (pid % per_group) // group_size

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int32)  # 32-bit compares: fewer registers
    m = tl.full((BLOCK_M,), NEG_BIG, dtype=tl.float32)
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sumz = tl.zeros((BLOCK_M,), dtype=tl.float32)
    zy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tiles_per_split):
        tile = split * tiles_per_split + i
        col0 = tile * BLOCK_N
        cols = col0 + tl.arange(0, BLOCK_N)
        col_ok = cols < V
        z = mixed_logits_tile(hs_desc, ws_desc, hw_desc, ww_desc, bias_ptr, pid_m * BLOCK_M, col0, V, HS, HW,
                              ratio, scale, softcap, USE_STRONG, USE_WEAK, HAS_BIAS, SOFTCAP, DOT_PRECISION,
                              BLOCK_M, BLOCK_N, BLOCK_K)
        sumz += tl.sum(z, axis=1)  # columns >= V are exactly 0 (zero-filled operands, masked bias, tanh(0) = 0)
        zy += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        tile_max = tl.max(z, axis=1)
        if STORE_D:
            # 32-bit offsets unless the workspace needs more: a [BLOCK_M, BLOCK_N] tile of 64-bit addresses
            # alone would take 128 registers per thread
            r_off = rows.to(tl.int64) if OFFSETS_64 else rows
            offs = r_off[:, None] * stride_d + cols[None, :]
            # max(., NEG_BIG): a tile wholly past V has tile_max = -inf; -inf - NEG_BIG stays -inf (not NaN)
            tl.store(d_ptr + offs, (z - tl.maximum(tile_max, NEG_BIG)[:, None]).to(d_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])
            tl.store(mt_ptr + r_off * stride_mt + tile, tile_max, mask=row_ok & (rows * 0 + col0 < V))
        m_new = tl.maximum(m, tile_max)
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
    tl.store(out + 3 * plane, sumz, mask=row_ok)
    tl.store(out + 4 * plane, zy, mask=row_ok)


def launch_forward(cfg, prob, descriptors, mixing, splits: int, tiles_per_split: int, part, with_stats: bool,
                   d=None, mt=None):
    """Run the forward kernel over all of `prob`'s rows; part is [5, splits, N] float32."""
    num_m = triton.cdiv(prob.n, cfg.block_m)
    store_d = d is not None
    bias = prob.bias if prob.bias is not None else part  # any pointer when HAS_BIAS is off
    mixed_ce_forward_kernel[(num_m * splits,)](
        *descriptors, bias, prob.labels, part, d if store_d else part, mt if store_d else part,
        prob.n, prob.vocab, **cfg.dims(prob), **mixing, num_m_blocks=num_m, num_splits=splits,
        tiles_per_split=tiles_per_split, stride_d=d.stride(0) if store_d else 0,
        stride_mt=mt.stride(0) if store_d else 0, WITH_ENTROPY=with_stats, STORE_D=store_d,
        OFFSETS_64=store_d and (d.shape[0] * d.stride(0) >= 2**31 or mt.numel() >= 2**31),
        GROUP_M=cfg.group_m, **cfg.const(prob, "forward", store_d),
    )
