"""Argument checks for mixed_linear_cross_entropy. Every failure is a ValueError that says what to fix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class CheckedArgs:
    hidden: torch.Tensor
    weight: torch.Tensor
    labels: torch.Tensor
    weak_hidden: torch.Tensor | None
    weak_weight: torch.Tensor | None
    lam: float


def _check_2d(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D, got shape {tuple(x.shape)}; flatten leading dims first, "
            f"e.g. {name}.reshape(-1, {name}.shape[-1])"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def check_inputs(
    hidden, weight, labels, weak_hidden, weak_weight, *, lam, ignore_index, reduction, check_label_range: bool = True
) -> CheckedArgs:
    _check_2d("hidden", hidden)
    _check_2d("weight", weight)
    n, hs = hidden.shape
    v = weight.shape[0]
    if n == 0:
        raise ValueError("hidden has no rows (N == 0): pass at least one token, or skip the call for an empty batch")
    if v == 0:
        raise ValueError("weight has no rows (V == 0): the vocabulary must be non-empty")
    if weight.shape[1] != hs:
        raise ValueError(
            f"hidden is [N, {hs}] but weight is {tuple(weight.shape)}: weight must be [V, {hs}] "
            "(the lm_head weight, not its transpose)"
        )
    if (weak_hidden is None) != (weak_weight is None):
        raise ValueError("pass both weak_hidden and weak_weight for a mixed loss, or neither for a single head")
    if weak_hidden is not None:
        _check_2d("weak_hidden", weak_hidden)
        _check_2d("weak_weight", weak_weight)
        if weak_hidden.shape[0] != n:
            raise ValueError(f"weak_hidden has {weak_hidden.shape[0]} rows but hidden has {n}: "
                             "both heads must see the same N tokens")
        if weak_weight.shape[0] != v:
            raise ValueError(f"weak_weight has {weak_weight.shape[0]} rows but weight has {v}: "
                             "both heads must share the vocabulary V")
        if weak_weight.shape[1] != weak_hidden.shape[1]:
            raise ValueError(
                f"weak_hidden is [N, {weak_hidden.shape[1]}] but weak_weight is {tuple(weak_weight.shape)}: "
                f"weak_weight must be [V, {weak_hidden.shape[1]}]"
            )
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of int64 ids, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D with N={n} entries (one target per row of hidden), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be int64 token ids, got {labels.dtype}; use labels.long()")
    tensors = [("hidden", hidden), ("weight", weight), ("labels", labels)]
    if weak_hidden is not None:
        tensors += [("weak_hidden", weak_hidden), ("weak_weight", weak_weight)]
    for name, x in tensors[1:]:
        if x.device != hidden.device:
            raise ValueError(f"{name} is on {x.device} but hidden is on {hidden.device}: move all inputs to one device")
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a float in [0, 1], got {lam!r}") from None
    if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be in [0, 1] (weight of the strong logits), got {lam}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")

    # dtypes: one compute dtype. Under autocast, cast to the autocast dtype as F.linear would; otherwise
    # mixing dtypes is an error (silently upcasting a [V, H] weight would cost a full copy).
    floats = [(name, x) for name, x in tensors if name != "labels"]
    dtypes = {x.dtype for _, x in floats}
    if len(dtypes) > 1:
        ac = _autocast_dtype(hidden.device)
        if ac is None:
            desc = ", ".join(f"{name}={x.dtype}" for name, x in floats)
            raise ValueError(f"inputs have different dtypes ({desc}): cast them to one dtype, "
                             "or run under torch.autocast")
        hidden, weight = hidden.to(ac), weight.to(ac)
        if weak_hidden is not None:
            weak_hidden, weak_weight = weak_hidden.to(ac), weak_weight.to(ac)

    labels = labels.long()
    if check_label_range:
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"labels[{first}] = {int(labels[first])} is outside [0, V={v}) and is not ignore_index={ignore_index}: "
                "fix the targets (or mark positions to skip with ignore_index)"
            )
    def dense(x):
        return None if x is None else x.contiguous()

    return CheckedArgs(dense(hidden), dense(weight), labels.contiguous(), dense(weak_hidden), dense(weak_weight), lam)
