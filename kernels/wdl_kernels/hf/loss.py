"""Next-token cross-entropy with Hugging Face semantics on top of the kernel, shared by the patched models.

HF's `ForCausalLMLoss`: labels are aligned with input_ids and shifted here (`labels[..., 1:]`, the last
position ignored) unless pre-shifted `shift_labels` are given (context parallelism, padding-free collators);
the loss is the mean over non-ignored tokens, or their sum / `num_items_in_batch` when the Trainer passes the
token count of the whole accumulated (and, with `average_tokens_across_devices`, global) batch.

Precision follows the lm_head it replaces: under autocast the hidden states and weights are cast to the
autocast dtype, as `nn.Linear` would cast them, and the kernel then runs with autocast off (its own fp32
accumulation, not autocast's choices for its internal ops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..api import mixed_linear_cross_entropy
from .heads import HeadTerm

# Set by this layer itself: a caller passing them as options would silently change the HF semantics.
RESERVED_OPTIONS = ("reduction", "num_items", "return_stats", "return_lse", "lam", "weak_hidden", "weak_weight",
                    "bias", "weak_bias")


def check_options(options: dict) -> dict:
    bad = sorted(set(options) & set(RESERVED_OPTIONS))
    if bad:
        raise ValueError(f"options {bad} are set by wdl_kernels.hf itself (HF loss semantics, the heads of the "
                         "model); pass only kernel options such as impl=, mode=, z_loss=, label_smoothing=")
    return dict(options)


def next_token_targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None,
                       ignore_index: int) -> torch.Tensor:
    """[B, T] targets: position t is scored against targets[:, t]."""
    if shift_labels is not None:
        return shift_labels
    if labels is None:
        raise ValueError("labels are required for the loss: pass labels (HF convention, ignore_index where no loss "
                         "is wanted) or pre-shifted shift_labels")
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


@dataclass
class FusedLoss:
    loss: torch.Tensor  # float32 scalar (HF semantics: mean, or sum / num_items_in_batch)
    token_loss: torch.Tensor | None  # [B, T] differentiable per-token loss (0 at ignored positions), when asked
    stats: dict[str, torch.Tensor] | None  # [B, T] float32 per-token stats of the distribution, no grad
    mask: torch.Tensor  # [B, T] bool: positions with a target


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype)


def fused_next_token_loss(
    strong: HeadTerm,
    weak: HeadTerm | None,
    targets: torch.Tensor,
    *,
    lam: float,
    ignore_index: int,
    num_items_in_batch=None,
    token_loss: bool = False,
    stats: bool = True,
    options: dict | None = None,
    fp32: bool = False,
) -> FusedLoss:
    """Loss of z = lam * z_strong + (1 - lam) * z_weak (z_strong alone without `weak`); each HeadTerm's hidden
    is [B, T, K]. `token_loss` keeps the per-token losses differentiable (TRL's fused-head protocol). `fp32`:
    the head's inputs in float32 whatever the autocast (TRL's cast_lm_head_to_fp32)."""
    b, t = targets.shape
    hidden = strong.hidden
    device = strong.weight.device
    dtype = torch.float32 if fp32 else _autocast_dtype(hidden.device) or hidden.dtype
    h = _cast(hidden.to(device).reshape(b * t, -1), dtype)
    kw = dict(options or {})
    if strong.bias is not None:
        kw["bias"] = _cast(strong.bias, dtype)
    hw = ww = None
    if weak is not None:
        hw = _cast(weak.hidden.to(device).reshape(b * t, -1), dtype)
        ww = _cast(weak.weight, dtype)
        if weak.bias is not None:
            kw["weak_bias"] = _cast(weak.bias, dtype)
    y = targets.to(device).reshape(-1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(device)
    if token_loss:  # per-token losses with grad (mode="fast" then runs lean: it needs a scalar upstream)
        kw.update(reduction="none")
    else:
        kw.update(reduction="sum" if num_items_in_batch is not None else "mean", num_items=num_items_in_batch)
    with torch.autocast(device.type, enabled=False):
        out = mixed_linear_cross_entropy(h, _cast(strong.weight, dtype), y, hw, ww, lam=lam, ignore_index=ignore_index,
                                         return_stats=stats, **kw)
    mask = targets.to(device) != ignore_index
    per_token = None
    loss = out.loss
    if token_loss:
        per_token = loss.view(b, t)
        loss = loss.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    token_stats = None
    if stats:
        token_stats = {name: value.view(b, t) for name, value in out.stats._asdict().items()}
        token_stats["valid"] = mask.float()
    return FusedLoss(loss, per_token, token_stats, mask)
