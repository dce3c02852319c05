"""Autograd function and the vocabulary-chunked backward shared by every backend.

Forward: the backend folds the mixed logits into online-softmax partials (no [N, V] buffer), giving the
per-row lse and stats; the loss is reduced from the per-row NLL.

Backward (exact, deterministic): rows whose upstream gradient is 0 (ignored labels) are dropped first. Then,
for each vocabulary chunk [v0, v1), the backend recomputes the logits and returns G = dL/dz for that chunk
([rows, chunk], fp32 or the input dtype), and

    dh_s += lam * G @ W_s[v0:v1]      (fp32 accumulators [rows, H], summed over chunks in a fixed order)
    dW_s[v0:v1] = lam * G^T @ h_s     (complete over all rows: one GEMM, or fp32 sums over token chunks)

and the same with (1 - lam) for the weak head. Chunking the vocabulary (not the tokens) keeps the weight
gradients free of cross-chunk read-modify-write and the workspace at rows x chunk. A head that does not
require grad costs nothing here.
"""

from __future__ import annotations

import torch

from .problem import Backend, Problem
from .stats import MixedCEStats, finalize_stats
from .matmul import accumulate_matmul, matmul_into


def forward_stats(prob: Problem, backend: Backend, ignore_index: int, with_stats: bool
                  ) -> tuple[MixedCEStats, torch.Tensor]:
    """Per-row stats (entropy and margin only meaningful when with_stats) and the valid-row mask."""
    partials = backend.forward_partials(prob, ignore_index, with_stats)
    valid = prob.labels != ignore_index
    return finalize_stats(partials, valid, prob.vocab), valid


def reduce_loss(nll: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return nll.clone()  # a tensor of its own: the stats' nll is returned non-differentiable beside it
    total = nll.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1).to(total.dtype)


def row_gradients(grad_loss: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """dLoss/dnll per row (float32 [N]); 0 at ignored rows."""
    g = grad_loss.float()
    if reduction == "mean":
        g = g / valid.sum().clamp(min=1).float()
    return torch.where(valid, g.expand(valid.shape), torch.zeros((), dtype=torch.float32, device=valid.device))


class _Head:
    """One side (strong or weak) of the mixture, as seen by the backward driver."""

    def __init__(self, hidden, weight, coef, need_dh, need_dw, out_dh, out_dw):
        self.hidden, self.weight, self.coef = hidden, weight, coef
        self.need_dh, self.need_dw = need_dh, need_dw
        self.out_dh, self.out_dw = out_dh, out_dw


def _compact(prob: Problem, rows: torch.Tensor) -> Problem:
    def take(x):
        return None if x is None else x.index_select(0, rows)

    return Problem(take(prob.hidden), prob.weight, take(prob.weak_hidden), prob.weak_weight, take(prob.labels),
                   prob.lam)


def backward_grads(
    prob: Problem,
    backend: Backend,
    lse: torch.Tensor,
    grad_rows: torch.Tensor,
    needs: tuple[bool, bool, bool, bool],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients (d hidden, d weight, d weak_hidden, d weak_weight); None where not needed."""
    need_dh, need_dw, need_dwh, need_dww = needs
    out_dh = torch.zeros_like(prob.hidden) if need_dh else None
    out_dw = torch.zeros_like(prob.weight) if need_dw else None
    out_dwh = torch.zeros_like(prob.weak_hidden) if need_dwh else None
    out_dww = torch.zeros_like(prob.weak_weight) if need_dww else None
    outputs = (out_dh, out_dw, out_dwh, out_dww)

    # Drop rows that contribute nothing (ignored labels, zero upstream): their rows of G would be all zero.
    active = grad_rows != 0
    n_active = int(active.sum())
    if n_active == 0:
        return outputs
    rows = None
    if n_active < prob.n:
        rows = active.nonzero().squeeze(1)
        prob, lse, grad_rows = _compact(prob, rows), lse.index_select(0, rows), grad_rows.index_select(0, rows)

    heads = []
    if prob.use_strong and (need_dh or need_dw):
        heads.append(_Head(prob.hidden, prob.weight, prob.strong_coef, need_dh, need_dw, out_dh, out_dw))
    if prob.use_weak and (need_dwh or need_dww):
        heads.append(_Head(prob.weak_hidden, prob.weak_weight, prob.weak_coef, need_dwh, need_dww, out_dwh, out_dww))
    if not heads:
        return outputs

    n, vocab = prob.n, prob.vocab
    token_chunk, vocab_chunk = backend.chunks(prob, n)
    dev = prob.hidden.device
    dh_acc = [torch.zeros(n, h.hidden.shape[1], dtype=torch.float32, device=dev) if h.need_dh else None for h in heads]
    one_token_chunk = token_chunk >= n
    workspace = None
    if one_token_chunk:
        workspace = torch.empty(n, min(vocab_chunk, vocab), dtype=backend.grad_dtype(prob), device=dev)

    for v0 in range(0, vocab, vocab_chunk):
        v1 = min(vocab, v0 + vocab_chunk)
        dw_acc = [None] * len(heads)
        for r0 in range(0, n, token_chunk):
            r1 = min(n, r0 + token_chunk)
            out = None if workspace is None else workspace[:, : v1 - v0]
            g = backend.grad_logits(prob, r0, r1, v0, v1, lse[r0:r1], grad_rows[r0:r1], out)
            for i, head in enumerate(heads):
                w_chunk = head.weight[v0:v1]
                if head.need_dh:
                    accumulate_matmul(dh_acc[i][r0:r1], g, w_chunk, head.coef)
                if head.need_dw:
                    h_rows = head.hidden[r0:r1]
                    if one_token_chunk and g.dtype == head.out_dw.dtype:
                        matmul_into(head.out_dw[v0:v1], g.T, h_rows, head.coef)
                    else:
                        if dw_acc[i] is None:
                            dw_acc[i] = torch.zeros(v1 - v0, w_chunk.shape[1], dtype=torch.float32, device=dev)
                        accumulate_matmul(dw_acc[i], g.T, h_rows, head.coef)
            del g
        for head, acc in zip(heads, dw_acc):
            if acc is not None:
                head.out_dw[v0:v1] = acc

    for head, acc in zip(heads, dh_acc):
        if head.need_dh:
            if rows is None:
                head.out_dh.copy_(acc)
            else:
                head.out_dh.index_copy_(0, rows, acc.to(head.out_dh.dtype))
    return outputs


class MixedLinearCrossEntropyFunction(torch.autograd.Function):
    """Differentiable w.r.t. hidden, weight, weak_hidden, weak_weight. Stats are returned non-differentiable."""

    @staticmethod
    def forward(ctx, hidden, weight, weak_hidden, weak_weight, labels, lam, ignore_index, reduction, with_stats,
                backend):
        prob = Problem(hidden, weight, weak_hidden, weak_weight, labels, lam)
        stats, valid = forward_stats(prob, backend, ignore_index, with_stats)
        loss = reduce_loss(stats.nll, valid, reduction)
        ctx.save_for_backward(hidden, weight, weak_hidden, weak_weight, labels, stats.lse, valid)
        ctx.lam, ctx.reduction, ctx.backend = lam, reduction, backend
        ctx.mark_non_differentiable(*stats)
        return (loss, *stats)

    @staticmethod
    def backward(ctx, grad_loss, *_grad_stats):
        hidden, weight, weak_hidden, weak_weight, labels, lse, valid = ctx.saved_tensors
        prob = Problem(hidden, weight, weak_hidden, weak_weight, labels, ctx.lam)
        needs = tuple(ctx.needs_input_grad[:4])
        grad_rows = row_gradients(grad_loss, valid, ctx.reduction)
        grads = backward_grads(prob, ctx.backend, lse, grad_rows, needs)
        return (*grads, None, None, None, None, None, None)
