"""Materialized reference: full [N, V] mixed logits in float64, gradients by autograd. For tests and benchmarks.

This is the slow, obviously-correct version every kernel path is checked against (the loss options are
written out as plain formulas here and differentiated by autograd, independently of the kernels' hand-written
gradients). It holds N x V float64 values, so keep N and V small.
"""

from __future__ import annotations

import torch

from .stats import MixedCEStats


def mixed_logits_reference(hidden, weight, weak_hidden=None, weak_weight=None, lam=0.5, *, bias=None,
                           weak_bias=None, temperature=1.0, softcap=None) -> torch.Tensor:
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    if weak_hidden is not None:
        zw = weak_hidden.double() @ weak_weight.double().T
        if weak_bias is not None:
            zw = zw + weak_bias.double()
        z = lam * z + (1.0 - lam) * zw
    z = z / temperature
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def reference_loss_and_stats(
    hidden, weight, labels, weak_hidden=None, weak_weight=None, *, lam=0.5, ignore_index=-100, reduction="mean",
    bias=None, weak_bias=None, temperature=1.0, softcap=None, z_loss=0.0, label_smoothing=0.0, num_items=None,
) -> tuple[torch.Tensor, MixedCEStats]:
    """Loss per `reduction` (differentiable w.r.t. the float64 graph) and float64 stats."""
    z = mixed_logits_reference(hidden, weight, weak_hidden, weak_weight, lam, bias=bias, weak_bias=weak_bias,
                               temperature=temperature, softcap=softcap)
    n, v = z.shape
    labels = labels.to(z.device)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(z, dim=1)
    zy = z.gather(1, safe[:, None]).squeeze(1)
    zero = torch.zeros_like(lse)
    nll = torch.where(valid, lse - zy, zero)
    row = (1.0 - label_smoothing) * (lse - zy) + label_smoothing * (lse - z.mean(dim=1)) + z_loss * lse ** 2
    row = torch.where(valid, row, zero)
    if reduction == "none":
        loss = row
    elif num_items is not None:
        loss = row.sum() / float(num_items)
    elif reduction == "sum":
        loss = row.sum()
    else:
        loss = row.sum() / valid.sum().clamp(min=1)
    with torch.no_grad():
        logp = torch.log_softmax(z, dim=1)
        p = logp.exp()
        entropy = -(p * logp).sum(dim=1)
        others = (z.sum(dim=1) - zy) / max(v - 1, 1)
        correct = valid & (z.argmax(dim=1) == safe)
        stats = MixedCEStats(
            lse=lse.detach(),
            entropy=entropy,
            nll=nll.detach(),
            target_logit=torch.where(valid, zy, zero).detach(),
            margin=torch.where(valid, zy - others, zero).detach(),
            max_prob=p.amax(dim=1),
            accuracy=correct.double(),
        )
    return loss, stats
