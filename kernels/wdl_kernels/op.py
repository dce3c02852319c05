"""The loss as torch.library custom ops, so torch.compile(fullgraph=True) traces through it as one node.

    wdl_kernels::mixed_ce           forward: loss, divisor, the 7 stats and (fast mode) the 6 gradients
    wdl_kernels::mixed_ce_backward  lean mode's backward: the 6 gradients

Gradient slots: (hidden, weight, weak_hidden, weak_weight, bias, weak_bias); a slot not wanted is an empty
tensor. Autocast is switched off inside (the kernels choose their own precision); the public function casts
mixed dtypes to the autocast dtype before the call, as F.linear would. The weights stay ordinary op inputs, so
FSDP2 / ZeRO-3 see their use in the autograd graph as with any other op.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import fast, lean
from .backends import backend_for
from .options import LossOptions
from .problem import Problem

N_STATS = 7  # lse, entropy, nll, target_logit, margin, max_prob, accuracy
GRAD_SLOTS = 6


def _options(lam, ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, with_stats=False):
    return LossOptions(lam=lam, ignore_index=ignore_index, reduction=reduction, temperature=temperature,
                       softcap=softcap, z_loss=z_loss, label_smoothing=label_smoothing, with_stats=with_stats)


def _problem(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, opts) -> Problem:
    prob = Problem(hidden, weight, weak_hidden, weak_weight, labels, None, opts)
    mixed = None
    for b, coef in ((bias, prob.strong_coef), (weak_bias, prob.weak_coef)):
        if b is not None and coef != 0.0:
            term = b.float() * (coef / opts.temperature)
            mixed = term if mixed is None else mixed + term
    return Problem(hidden, weight, weak_hidden, weak_weight, labels, mixed, opts)


def _check_label_range(labels: Tensor, vocab: int, ignore_index: int) -> None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    message = (f"labels outside [0, V={vocab}) that are not ignore_index={ignore_index}: fix the targets (or mark "
               "positions to skip with ignore_index)")
    if labels.is_cuda:  # a device-side assert: no host sync (a failure surfaces at the next synchronisation)
        torch._assert_async(~bad.any(), message)
    elif bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels[{first}] = {int(labels[first])} is outside [0, V={vocab}) and is not "
                         f"ignore_index={ignore_index}: fix the targets (or mark positions to skip with "
                         "ignore_index)")


def _divisor(labels, opts: LossOptions, num_items: Optional[Tensor], num_items_value: float) -> Tensor:
    if num_items is not None:
        return num_items.detach().reshape(()).to(device=labels.device, dtype=torch.float32, copy=True)
    if num_items_value > 0:
        return torch.full((), num_items_value, dtype=torch.float32, device=labels.device)
    if opts.reduction == "mean":
        return (labels != opts.ignore_index).sum().clamp(min=1).to(torch.float32)
    return torch.ones((), dtype=torch.float32, device=labels.device)


@torch.library.custom_op("wdl_kernels::mixed_ce", mutates_args=())
def mixed_ce(
    hidden: Tensor, weight: Tensor, labels: Tensor, weak_hidden: Optional[Tensor], weak_weight: Optional[Tensor],
    bias: Optional[Tensor], weak_bias: Optional[Tensor], num_items: Optional[Tensor], num_items_value: float,
    lam: float, ignore_index: int, reduction: str, temperature: float, softcap: float, z_loss: float,
    label_smoothing: float, with_stats: bool, backend: str, fast_mode: bool, needs: Sequence[bool],
    validate: bool, token_chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with torch.autocast(hidden.device.type, enabled=False):
        opts = _options(lam, ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, with_stats)
        if validate:
            _check_label_range(labels, weight.shape[0], ignore_index)
        prob = _problem(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, opts)
        be = backend_for(backend, hidden.device, [("hidden", hidden), ("weight", weight),
                                                   ("weak_hidden", weak_hidden), ("weak_weight", weak_weight)])
        divisor = _divisor(labels, opts, num_items, num_items_value)
        if fast_mode and any(needs):
            stats, row_loss, grads = fast.forward_with_grads(prob, be, with_stats, needs, (bias, weak_bias), divisor,
                                                             token_chunk)
        else:
            stats, row_loss = lean.forward(prob, be, with_stats)
            grads = [None] * GRAD_SLOTS
        loss = row_loss.clone() if reduction == "none" else row_loss.sum() / divisor  # outputs must not alias
        return (loss, divisor, *stats, *(g if g is not None else hidden.new_empty(0) for g in grads))


@mixed_ce.register_fake
def _(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, num_items, num_items_value, lam,
      ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, with_stats, backend, fast_mode,
      needs, validate, token_chunk):
    n = hidden.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    loss = hidden.new_empty((n,) if reduction == "none" else (), **f32)
    stats = [hidden.new_empty(n, **f32) for _ in range(N_STATS)]
    inputs = (hidden, weight, weak_hidden, weak_weight, bias, weak_bias)
    grads = [torch.empty_like(x) if fast_mode and need and x is not None else hidden.new_empty(0)
             for x, need in zip(inputs, needs)]
    return (loss, hidden.new_empty((), **f32), *stats, *grads)


@torch.library.custom_op("wdl_kernels::mixed_ce_backward", mutates_args=())
def mixed_ce_backward(
    hidden: Tensor, weight: Tensor, labels: Tensor, weak_hidden: Optional[Tensor], weak_weight: Optional[Tensor],
    bias: Optional[Tensor], weak_bias: Optional[Tensor], lse: Tensor, divisor: Tensor, grad_loss: Tensor,
    grad_lse: Optional[Tensor], lam: float, ignore_index: int, reduction: str, temperature: float, softcap: float,
    z_loss: float, label_smoothing: float, backend: str, needs: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with torch.autocast(hidden.device.type, enabled=False):
        opts = _options(lam, ignore_index, reduction, temperature, softcap, z_loss, label_smoothing)
        prob = _problem(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, opts)
        be = backend_for(backend, hidden.device, [("hidden", hidden), ("weight", weight),
                                                   ("weak_hidden", weak_hidden), ("weak_weight", weak_weight)])
        valid = labels != ignore_index
        g = grad_loss.float()
        if reduction != "none":
            g = (g / divisor).expand(labels.shape)
        grad_rows = torch.where(valid, g, torch.zeros((), dtype=torch.float32, device=g.device))
        grads = lean.backward(prob, be, lse, grad_rows, None if grad_lse is None else grad_lse.float(), needs,
                              (bias, weak_bias))
        return tuple(x if x is not None else hidden.new_empty(0) for x in grads)


@mixed_ce_backward.register_fake
def _(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, lse, divisor, grad_loss, grad_lse, lam,
      ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, backend, needs):
    inputs = (hidden, weight, weak_hidden, weak_weight, bias, weak_bias)
    return tuple(torch.empty_like(x) if need and x is not None else hidden.new_empty(0)
                 for x, need in zip(inputs, needs))


# --- autograd ----------------------------------------------------------------------------------------
_GRAD_INPUTS = (0, 1, 3, 4, 5, 6)  # positions of hidden, weight, weak_hidden, weak_weight, bias, weak_bias
_N_INPUTS = 22


def _setup_context(ctx, inputs, output):
    (hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, _num_items, _num_items_value, lam,
     ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, _with_stats, backend, fast_mode,
     needs, _validate, _token_chunk) = inputs
    loss, divisor, lse, *rest = output
    stats, grads = rest[: N_STATS - 1], rest[N_STATS - 1:]
    ctx.fast_mode = bool(fast_mode and any(needs))
    ctx.needs = tuple(bool(x) for x in needs)
    ctx.options = (lam, ignore_index, reduction, temperature, softcap, z_loss, label_smoothing, backend)
    ctx.set_materialize_grads(False)
    # one call: a second mark_non_differentiable would replace the first set
    ctx.mark_non_differentiable(divisor, *stats, *grads, *((lse,) if ctx.fast_mode else ()))
    if ctx.fast_mode:
        ctx.save_for_backward(*grads)
    else:
        ctx.save_for_backward(hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, lse, divisor)


def _backward(ctx, grad_loss, _grad_divisor, grad_lse, *_unused):
    result = [None] * _N_INPUTS
    if ctx.fast_mode:
        if grad_loss is None:
            return tuple(result)
        grads = ctx.saved_tensors
        for slot, pos in enumerate(_GRAD_INPUTS):
            if ctx.needs[slot]:
                g = grads[slot]
                # In place (no second copy of the gradients); autograd's version check then refuses a second
                # backward through the same graph. Traced graphs take the out-of-place form.
                result[pos] = g * grad_loss if torch.compiler.is_compiling() else g.mul_(grad_loss)
        return tuple(result)
    hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, lse, divisor = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if ctx.options[2] == "none":
            grad_loss = grad_loss.expand(labels.shape)
    grads = torch.ops.wdl_kernels.mixed_ce_backward(
        hidden, weight, labels, weak_hidden, weak_weight, bias, weak_bias, lse, divisor, grad_loss, grad_lse,
        *ctx.options, list(ctx.needs))
    for slot, pos in enumerate(_GRAD_INPUTS):
        if ctx.needs[slot]:
            result[pos] = grads[slot]
    return tuple(result)


torch.library.register_autograd("wdl_kernels::mixed_ce", _backward, setup_context=_setup_context)
