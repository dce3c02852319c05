"""Online log-sum-exp partials of the mixed logits and the per-row statistics derived from them.

Every implementation reduces a block of mixed logits z (rows x some vocabulary columns) to five fp32 numbers
per row, merges blocks pairwise in a fixed order (deterministic), and finalizes:

    m     running max of z
    s     sum_j exp(z_j - m)
    t     sum_j exp(z_j - m) * (z_j - m)      (<= 0; gives the entropy without cancellation at |z| ~ 1e3)
    sumz  sum_j z_j                           (for the margin's mean over non-target logits)
    zy    z at the row's label, 0 if the label is not in the block (or is ignore_index)

    lse = m + log s,  entropy = log s - t / s,  max_prob = exp(m - lse) = 1 / s,  accuracy = [zy >= m].

Every implementation takes z_y and sum_j z_j from the same fp32 logits it folds into m and s, so z_y >= m holds
exactly when the label's logit is the row's maximum.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .options import LossOptions

# Finite stand-in for -inf as the initial running max: keeps (m_old - m_new) * s finite when s == 0.
NEG_BIG = -1.0e30


class Partials(NamedTuple):
    m: torch.Tensor
    s: torch.Tensor
    t: torch.Tensor
    sumz: torch.Tensor
    zy: torch.Tensor


class MixedCEStats(NamedTuple):
    """Per-row float32 statistics of the mixed distribution p = softmax(z), shape [N], no grad.

    nll, target_logit, margin and accuracy are 0 at ignored rows; lse, entropy and max_prob are given for every
    row.
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    nll: torch.Tensor
    target_logit: torch.Tensor
    margin: torch.Tensor
    max_prob: torch.Tensor
    accuracy: torch.Tensor  # 1.0 where argmax_j z_j == label (a tie with the label counts as correct)


def empty_partials(n: int, device: torch.device) -> Partials:
    zeros = torch.zeros(n, dtype=torch.float32, device=device)
    return Partials(torch.full_like(zeros, NEG_BIG), zeros, zeros.clone(), zeros.clone(), zeros.clone())


def partials_from_logits(z: torch.Tensor, local_labels: torch.Tensor) -> Partials:
    """Reduce a float32 block z [n, c] whose column j is vocabulary id v0 + j; local_labels = labels - v0."""
    m = z.amax(dim=1)
    d = z - m[:, None]
    e = torch.exp(d)
    s = e.sum(dim=1)
    t = (e * d).sum(dim=1)
    sumz = z.sum(dim=1)
    in_block = (local_labels >= 0) & (local_labels < z.shape[1])
    idx = torch.where(in_block, local_labels, torch.zeros_like(local_labels))
    zy = torch.where(in_block, z.gather(1, idx[:, None]).squeeze(1), torch.zeros_like(m))
    return Partials(m, s, t, sumz, zy)


def merge_partials(a: Partials, b: Partials) -> Partials:
    m = torch.maximum(a.m, b.m)
    wa = torch.exp(a.m - m)
    wb = torch.exp(b.m - m)
    s = a.s * wa + b.s * wb
    t = (a.t + (a.m - m) * a.s) * wa + (b.t + (b.m - m) * b.s) * wb
    return Partials(m, s, t, a.sumz + b.sumz, a.zy + b.zy)


def merge_split_partials(stacked: torch.Tensor) -> Partials:
    """Merge partials stored as [5, S, N] (m, s, t, sumz, zy) over S vocabulary splits: a fixed-order reduction
    over the split axis (deterministic), a handful of ops whatever S is."""
    m_i, s_i, t_i, sumz_i, zy_i = stacked.unbind(0)
    m = m_i.amax(dim=0)
    d = m_i - m
    w = torch.exp(d)
    s = (s_i * w).sum(dim=0)
    t = ((t_i + d * s_i) * w).sum(dim=0)
    return Partials(m, s, t, sumz_i.sum(dim=0), zy_i.sum(dim=0))


def finalize_stats(p: Partials, labels: torch.Tensor, vocab_size: int, opts: LossOptions
                   ) -> tuple[MixedCEStats, torch.Tensor]:
    """Per-row stats and the per-row loss (options.py), float32 [N] each; 0 at ignored rows.

    A label outside [0, V) that is not ignore_index (possible only with validate=False) matches no column: its
    row's loss and nll are NaN, so a training loop's finite check stops on it instead of training on garbage.
    """
    valid = labels != opts.ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab_size))
    log_s = torch.log(p.s)
    lse = p.m + log_s
    entropy = log_s - p.t / p.s
    max_prob = 1.0 / p.s
    zero = torch.zeros_like(lse)
    nan = torch.full_like(lse, float("nan"))
    target_logit = torch.where(valid, p.zy, zero)
    nll = torch.where(bad, nan, torch.where(valid, lse - p.zy, zero))
    others = max(vocab_size - 1, 1)
    margin = torch.where(valid, p.zy - (p.sumz - p.zy) / others, zero)
    accuracy = (valid & ~bad & (p.zy >= p.m)).to(lse.dtype)  # z_y is the max: argmax == label (ties count)
    if opts.plain:
        row_loss = nll
    else:
        eps = opts.label_smoothing
        row = (1.0 - eps) * (lse - p.zy) + eps * (lse - p.sumz / vocab_size) + opts.z_loss * lse * lse
        row_loss = torch.where(bad, nan, torch.where(valid, row, zero))
    return MixedCEStats(lse, entropy, nll, target_logit, margin, max_prob, accuracy), row_loss
