"""Materialized reference: full [N, V] mixed logits in float64. For tests and benchmarks only.

This is the slow, obviously-correct version every kernel path is checked against; it holds N x V float64
values, so keep N and V small.
"""

from __future__ import annotations

import torch

from .stats import MixedCEStats


def mixed_logits_reference(hidden, weight, weak_hidden=None, weak_weight=None, lam=0.5) -> torch.Tensor:
    z = hidden.double() @ weight.double().T
    if weak_hidden is not None:
        z = lam * z + (1.0 - lam) * (weak_hidden.double() @ weak_weight.double().T)
    return z


def reference_loss_and_stats(
    hidden, weight, labels, weak_hidden=None, weak_weight=None, *, lam=0.5, ignore_index=-100, reduction="mean"
) -> tuple[torch.Tensor, MixedCEStats]:
    """Loss per `reduction` (differentiable w.r.t. the float64 graph) and float64 stats."""
    z = mixed_logits_reference(hidden, weight, weak_hidden, weak_weight, lam)
    n, v = z.shape
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(z, dim=1)
    zy = z.gather(1, safe[:, None]).squeeze(1)
    zero = torch.zeros_like(lse)
    nll = torch.where(valid, lse - zy, zero)
    if reduction == "none":
        loss = nll
    elif reduction == "sum":
        loss = nll.sum()
    else:
        loss = nll.sum() / valid.sum().clamp(min=1)
    with torch.no_grad():
        logp = torch.log_softmax(z, dim=1)
        p = logp.exp()
        entropy = -(p * logp).sum(dim=1)
        others = (z.sum(dim=1) - zy) / max(v - 1, 1)
        stats = MixedCEStats(
            lse=lse.detach(),
            entropy=entropy,
            nll=nll.detach(),
            target_logit=torch.where(valid, zy, zero).detach(),
            margin=torch.where(valid, zy - others, zero).detach(),
            max_prob=p.amax(dim=1),
        )
    return loss, stats
