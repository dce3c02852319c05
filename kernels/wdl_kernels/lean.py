"""Lean mode: forward statistics, then an exact backward that recomputes the logits chunk by chunk.

Forward (2NVH per head): the backend folds the mixed logits into online-softmax partials; the per-row stats
and loss follow (stats.py). Nothing [N, V]-sized is kept.

Backward (6NVH per head that needs gradients): for each vocabulary chunk [v0, v1) the backend recomputes the
logits and returns G = dL/dz_raw for that chunk ([rows, chunk], fp32 or the input dtype), and

    dh_s  += G @ W_s[v0:v1]       (fp32 accumulators [N, Hs], summed over chunks in a fixed order)
    dW_s[v0:v1] = G^T @ h_s       (complete over all rows: one fp32-output GEMM, rounded once)

(the same for the weak head); every result is multiplied by coef * scale at the end, in fp32. G holds row
coefficients normalised to |.| <= 1 (`row_coefficients`) and the 1/N of a mean lives in `scale`, so a 16-bit G
never underflows. Ignored rows are not compacted (no host sync, no copies of the hidden states): their G rows
are zero and a row block that is all ignored skips its logits. Extra memory: the fp32 dh accumulators, one
G workspace (the backend's chunk rule) and a [<= gemm.BLOCK_ROWS, H] fp32 dW block.
"""

from __future__ import annotations

import torch

from .gemm import BLOCK_ROWS, addmm_fp32_, mm_fp32
from .problem import Backend, Problem
from .stats import MixedCEStats, finalize_stats


def forward(prob: Problem, backend: Backend, with_stats: bool) -> tuple[MixedCEStats, torch.Tensor]:
    """Per-row stats and per-row loss (entropy meaningful only when with_stats)."""
    return finalize_stats(backend.forward_partials(prob, with_stats), prob.labels, prob.vocab, prob.opts)


def row_coefficients(grad_rows: torch.Tensor, grad_lse: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(gcoef, lcoef, scale) with gcoef * scale = grad_rows, lcoef * scale = grad_lse and |coef| <= 1.

    Device ops only (no host sync). scale is a 0-d float32 tensor; all-zero upstreams give scale 1, coef 0.
    """
    peak = grad_rows.abs().amax()
    if grad_lse is not None:
        peak = torch.maximum(peak, grad_lse.abs().amax())
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return grad_rows / scale, (None if grad_lse is None else grad_lse / scale), scale


class Head:
    """One side (strong or weak) of the mixture as the gradient GEMMs see it; dh_slot / dw_slot index the
    gradient outputs (d hidden, d weight, d weak_hidden, d weak_weight, d bias, d weak_bias)."""

    def __init__(self, hidden, weight, coef, need_dh, need_dw, dh_slot, dw_slot):
        self.hidden, self.weight, self.coef = hidden, weight, coef
        self.need_dh, self.need_dw = need_dh, need_dw
        self.dh_slot, self.dw_slot = dh_slot, dw_slot


def heads_needing_grads(prob: Problem, needs) -> list[Head]:
    need_dh, need_dw, need_dwh, need_dww = needs[:4]
    heads = []
    if prob.use_strong and (need_dh or need_dw):
        heads.append(Head(prob.hidden, prob.weight, prob.strong_coef, need_dh, need_dw, 0, 1))
    if prob.use_weak and (need_dwh or need_dww):
        heads.append(Head(prob.weak_hidden, prob.weak_weight, prob.weak_coef, need_dwh, need_dww, 2, 3))
    return heads


def grad_outputs(prob: Problem, needs, biases, heads: list[Head]) -> list[torch.Tensor | None]:
    """Gradient outputs: uninitialised where the GEMMs write every element, zeros for a head whose
    coefficient is 0 (lam = 0 or 1), None where no gradient is wanted."""
    tensors = (prob.hidden, prob.weight, prob.weak_hidden, prob.weak_weight, *biases)
    written = {h.dh_slot for h in heads if h.need_dh} | {h.dw_slot for h in heads if h.need_dw}
    written |= {4} if prob.use_strong else set()
    written |= {5} if prob.use_weak else set()
    return [None if not need else torch.empty_like(t) if i in written else torch.zeros_like(t)
            for i, (t, need) in enumerate(zip(tensors, needs))]


def write_scaled(dst: torch.Tensor, src: torch.Tensor, scale: torch.Tensor) -> None:
    """dst = src * scale in fp32, rounded once to dst's dtype."""
    torch.mul(src, scale, out=dst)


def backward(prob: Problem, backend: Backend, lse: torch.Tensor, grad_rows: torch.Tensor,
             grad_lse: torch.Tensor | None, needs, biases) -> list[torch.Tensor | None]:
    """Gradients (d hidden, d weight, d weak_hidden, d weak_weight, d bias, d weak_bias); None where not needed.

    grad_rows is dLoss/d(row loss) per row (0 at ignored rows), grad_lse the upstream of a differentiable lse.
    """
    heads = heads_needing_grads(prob, needs)
    outputs = grad_outputs(prob, needs, biases, heads)
    need_db = [needs[4] and prob.use_strong, needs[5] and prob.use_weak]
    if not heads and not any(need_db):
        return outputs
    gcoef, lcoef, scale = row_coefficients(grad_rows, grad_lse)
    # G is stored times grad_scale and without the temperature's 1/T: both are divided out here.
    scale = scale / (backend.grad_scale(prob) * prob.opts.temperature)
    n, vocab, dev = prob.n, prob.vocab, prob.hidden.device
    token_chunk, vocab_chunk = backend.lean_chunks(prob)
    one_token_chunk = token_chunk >= n
    dh_acc = [torch.zeros(n, h.hidden.shape[1], dtype=torch.float32, device=dev) if h.need_dh else None
              for h in heads]
    db_acc = torch.zeros(vocab, dtype=torch.float32, device=dev) if any(need_db) else None
    workspace = None
    if one_token_chunk:
        workspace = torch.empty(n, min(vocab_chunk, vocab), dtype=backend.grad_dtype(prob), device=dev)
    for v0 in range(0, vocab, vocab_chunk):
        v1 = min(vocab, v0 + vocab_chunk)
        dw_acc = [None] * len(heads)
        for r0 in range(0, n, token_chunk):
            r1 = min(n, r0 + token_chunk)
            out = None if workspace is None else workspace[:, : v1 - v0]
            g = backend.grad_block(prob, r0, r1, v0, v1, lse[r0:r1], gcoef[r0:r1],
                                   None if lcoef is None else lcoef[r0:r1], out)
            for i, head in enumerate(heads):
                if head.need_dh:
                    addmm_fp32_(dh_acc[i][r0:r1], g, head.weight[v0:v1])
                if not head.need_dw:
                    continue
                h_rows = head.hidden[r0:r1]
                if one_token_chunk:  # complete: write in row blocks of the vocabulary, one rounding each
                    dst = outputs[head.dw_slot]
                    for j0 in range(0, v1 - v0, BLOCK_ROWS):
                        j1 = min(v1 - v0, j0 + BLOCK_ROWS)
                        write_scaled(dst[v0 + j0:v0 + j1], mm_fp32(g[:, j0:j1].T, h_rows), scale * head.coef)
                else:
                    if dw_acc[i] is None:
                        dw_acc[i] = torch.zeros(v1 - v0, h_rows.shape[1], dtype=torch.float32, device=dev)
                    addmm_fp32_(dw_acc[i], g.T, h_rows)
            if db_acc is not None:
                db_acc[v0:v1] += g.sum(dim=0, dtype=torch.float32)
            del g
        for i, acc in enumerate(dw_acc):
            if acc is not None:
                write_scaled(outputs[heads[i].dw_slot][v0:v1], acc, scale * heads[i].coef)

    for i, head in enumerate(heads):
        if head.need_dh:
            write_scaled(outputs[head.dh_slot], dh_acc[i], scale * head.coef)
    for slot, coef, need in ((4, prob.strong_coef, need_db[0]), (5, prob.weak_coef, need_db[1])):
        if need:
            write_scaled(outputs[slot], db_acc, scale * coef)
    return outputs

