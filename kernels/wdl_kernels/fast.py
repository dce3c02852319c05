"""Fast mode: the gradients are computed during the forward, over token chunks (6NVH of GEMM work per head).

When the loss's upstream gradient is a scalar (reduction "mean" or "sum"), G = dL/dz_raw of a row needs only
that row's logits and lse, so no second logits pass is needed. Per chunk of rows, the backend computes the
mixed logits once (fp32 tiles, both heads in one accumulator, never rounded before mixing), the row
statistics, and G for the chunk ([rows, V], the input dtype); then

    dh_s[rows]  = G @ W_s              (fp32-output GEMM, scaled and rounded once into the output rows)
    dW_s       += G^T @ h_s[rows]      (fp32 accumulators across chunks; a batch in one chunk writes dW
                                        directly, in vocabulary blocks, with no accumulator)

The backward only multiplies the stored gradients by the upstream scalar (exact when it is 1).

Extra memory during the forward (the returned gradients excluded):
    one chunk's workspace     token_chunk x V x 2 bytes (16-bit inputs; 4 for fp32) + token_chunk x V/128 x 4
    + fp32 dW accumulators    4 x V x (Hs + Hw) bytes, only when the batch spans several chunks
    + a [token_chunk, H] fp32 dh block and [<= gemm.BLOCK_ROWS, H] fp32 dW blocks.
"""

from __future__ import annotations

import torch

from .gemm import BLOCK_ROWS, addmm_fp32_, mm_fp32
from .lean import grad_outputs, heads_needing_grads, write_scaled
from .problem import Backend, Problem
from .stats import MixedCEStats, Partials, finalize_stats


def forward_with_grads(prob: Problem, backend: Backend, with_stats: bool, needs, biases, divisor: torch.Tensor,
                       token_chunk: int = 0) -> tuple[MixedCEStats, torch.Tensor, list[torch.Tensor | None]]:
    """(stats, row_loss, grads) where grads are d(sum of row losses / divisor) for an upstream of 1.
    token_chunk: rows per chunk (0: the backend's default, sized by its workspace rule)."""
    n, vocab, dev = prob.n, prob.vocab, prob.hidden.device
    heads = heads_needing_grads(prob, needs)
    outputs = grad_outputs(prob, needs, biases, heads)
    need_db = [needs[4] and prob.use_strong, needs[5] and prob.use_weak]
    token_chunk = min(n, token_chunk) if token_chunk > 0 else backend.fast_token_chunk(prob)
    one_chunk = token_chunk >= n
    # G is stored times grad_scale and without the temperature's 1/T; the mean's 1/N is in the divisor.
    scale = 1.0 / (divisor * (backend.grad_scale(prob) * prob.opts.temperature))
    dw_acc = [torch.zeros(vocab, h.hidden.shape[1], dtype=torch.float32, device=dev)
              if h.need_dw and not one_chunk else None for h in heads]
    db_acc = torch.zeros(vocab, dtype=torch.float32, device=dev) if any(need_db) else None
    partials = Partials(*(torch.empty(n, dtype=torch.float32, device=dev) for _ in range(5)))
    workspace = backend.new_fast_workspace(prob, token_chunk)

    for r0 in range(0, n, token_chunk):
        r1 = min(n, r0 + token_chunk)
        part, g = backend.fast_block(prob, r0, r1, with_stats, workspace)
        for dst, src in zip(partials, part):
            dst[r0:r1] = src
        for i, head in enumerate(heads):
            if head.need_dh:
                write_scaled(outputs[head.dh_slot][r0:r1], mm_fp32(g, head.weight), scale * head.coef)
            if head.need_dw:
                h_rows = head.hidden[r0:r1]
                if one_chunk:
                    dst = outputs[head.dw_slot]
                    for j0 in range(0, vocab, BLOCK_ROWS):
                        j1 = min(vocab, j0 + BLOCK_ROWS)
                        write_scaled(dst[j0:j1], mm_fp32(g[:, j0:j1].T, h_rows), scale * head.coef)
                else:
                    addmm_fp32_(dw_acc[i], g.T, h_rows)
        if db_acc is not None:
            db_acc += g.sum(dim=0, dtype=torch.float32)
        del g

    for i, head in enumerate(heads):
        if dw_acc[i] is not None:
            write_scaled(outputs[head.dw_slot], dw_acc[i], scale * head.coef)
            dw_acc[i] = None  # free the fp32 accumulator before the next one is rounded
    for slot, coef, need in ((4, prob.strong_coef, need_db[0]), (5, prob.weak_coef, need_db[1])):
        if need:
            write_scaled(outputs[slot], db_acc, scale * coef)
    stats, row_loss = finalize_stats(partials, prob.labels, vocab, prob.opts)
    return stats, row_loss, outputs
