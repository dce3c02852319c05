"""The materialized baseline: what the reference implementation of the algorithm computes, full [N, V] logits.

Both heads' logits in the input dtype, `torch.stack([weak, strong])` (a copy, as QwenBoostForCausalLM does),
the lambda-mix, an fp32 upcast (as Hugging Face's ForCausalLMLoss does), then the loss. The kernel benchmark's
`eager` implementation and the end-to-end benchmark's reference path both use these functions; the float64
ground truth the kernel is checked against is `wdl_kernels.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from wdl_kernels import MixedCEStats

from wdl.labels import IGNORE_INDEX


def mixed_logits(hidden, weight, weak_hidden=None, weak_weight=None, *, lam: float) -> torch.Tensor:
    """lam * hidden @ weight.T + (1 - lam) * weak_hidden @ weak_weight.T through a stacked copy, upcast to fp32
    (the strong logits alone without a weak head)."""
    logits = F.linear(hidden, weight)
    if weak_hidden is not None:
        stacked = torch.stack([F.linear(weak_hidden, weak_weight), logits])
        logits = (1.0 - lam) * stacked[0] + lam * stacked[1]
    return logits.float()


@torch.no_grad()
def stats_from_logits(z: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> MixedCEStats:
    """The kernel's per-row statistics computed from materialized logits [N, V]."""
    z = z.float()
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(z, dim=1)
    logp = z - lse[:, None]
    entropy = -(logp.exp() * logp).sum(dim=1)
    zy = z.gather(1, safe[:, None]).squeeze(1)
    zero = torch.zeros_like(lse)
    zmax = z.amax(dim=1)
    others = (z.sum(dim=1) - zy) / max(z.shape[1] - 1, 1)
    return MixedCEStats(
        lse=lse, entropy=entropy, nll=torch.where(valid, lse - zy, zero), target_logit=torch.where(valid, zy, zero),
        margin=torch.where(valid, zy - others, zero), max_prob=torch.exp(zmax - lse),
        accuracy=(valid & (zy >= zmax)).float(),
    )


def cross_entropy_sum(z: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Sum of the token losses of fp32 logits (0 at ignored rows)."""
    return F.cross_entropy(z, labels, ignore_index=ignore_index, reduction="sum")
