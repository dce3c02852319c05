"""Argument checks for mixed_linear_cross_entropy. Every failure is a ValueError that says what to fix.

Shapes, dtypes and devices are checked here, without touching tensor data (no host sync, traceable by
torch.compile); the label range is checked inside the op (op.py), on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
IMPLS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class CheckedArgs:
    hidden: torch.Tensor
    weight: torch.Tensor
    labels: torch.Tensor
    weak_hidden: torch.Tensor | None
    weak_weight: torch.Tensor | None


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


def check_inputs(hidden, weight, labels, weak_hidden, weak_weight) -> CheckedArgs:
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

    def dense(x):
        return None if x is None else x.contiguous()

    return CheckedArgs(dense(hidden), dense(weight), labels.contiguous(), dense(weak_hidden), dense(weak_weight))


def check_bias(name: str, bias, vocab: int, device: torch.device, head_given: bool = True):
    """A [V] lm_head bias (any float dtype: it is mixed in fp32), or None."""
    if bias is None:
        return None
    if not head_given:
        raise ValueError(f"{name} was given without weak_hidden/weak_weight: pass the weak head too, or drop it")
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [V], got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != vocab:
        raise ValueError(f"{name} must be 1-D with V={vocab} entries (the lm_head bias), got shape {tuple(bias.shape)}")
    if bias.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {bias.dtype}")
    if bias.device != device:
        raise ValueError(f"{name} is on {bias.device} but hidden is on {device}: move all inputs to one device")
    return bias.contiguous()


def check_num_items(num_items, reduction: str, device: torch.device) -> tuple[torch.Tensor | None, float]:
    """(tensor, value): the divisor of the summed loss, as a 0-d tensor or a positive float (0.0 = none)."""
    if num_items is None:
        return None, 0.0
    if reduction == "none":
        raise ValueError("num_items divides the summed loss: use it with reduction='sum' or 'mean', not 'none'")
    if isinstance(num_items, torch.Tensor):
        if num_items.numel() != 1:
            raise ValueError(f"num_items must be a number or a one-element tensor, got shape {tuple(num_items.shape)}")
        if num_items.device != device and num_items.device.type != "cpu":
            raise ValueError(f"num_items is on {num_items.device} but hidden is on {device}")
        return num_items, 0.0
    if isinstance(num_items, bool) or not isinstance(num_items, (int, float)) or not num_items > 0:
        raise ValueError("num_items must be a positive number (e.g. the global count of label tokens), "
                         f"got {num_items!r}")
    return None, float(num_items)


def check_token_chunk(token_chunk) -> None:
    if token_chunk is not None and (isinstance(token_chunk, bool) or not isinstance(token_chunk, int)
                                    or token_chunk < 1):
        raise ValueError(f"token_chunk must be a positive int (rows per fast-mode chunk) or None for the "
                         f"backend's default, got {token_chunk!r}")
