"""Public entry point: mixed_linear_cross_entropy."""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import op  # noqa: F401  (registers the wdl_kernels:: custom ops)
from .backends import resolve_impl
from .options import MODES, LossOptions
from .stats import MixedCEStats
from .validation import check_bias, check_inputs, check_num_items, check_token_chunk


class MixedCEOutput(NamedTuple):
    loss: torch.Tensor  # float32; scalar for "mean"/"sum", [N] for "none"
    stats: MixedCEStats | None  # per-row float32 stats of the mixed distribution (no grad), or None
    lse: torch.Tensor | None = None  # return_lse: per-row log-sum-exp [N], differentiable


def choose_mode(mode: str, reduction: str, return_lse: bool) -> str:
    """The mode that runs. Fast mode computes the gradients in the forward, which needs a scalar upstream
    (reduction "mean"/"sum") and a loss that is the only differentiable output; otherwise lean runs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "fast" and (reduction == "none" or return_lse):
        return "lean"
    return mode


def mixed_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    weak_hidden: torch.Tensor | None = None,
    weak_weight: torch.Tensor | None = None,
    *,
    lam: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_stats: bool = False,
    impl: str = "auto",
    mode: str = "lean",
    bias: torch.Tensor | None = None,
    weak_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    num_items: float | torch.Tensor | None = None,
    return_lse: bool = False,
    validate: bool = True,
    token_chunk: int | None = None,
) -> MixedCEOutput:
    """Cross-entropy of mixed logits, never holding an [N, V] tensor.

        z = softcap * tanh((lam * (hidden @ weight.T + bias) + (1 - lam) * (weak_hidden @ weak_weight.T
            + weak_bias)) / temperature / softcap)
        row loss = (1 - label_smoothing) * (lse - z_y) + label_smoothing * (lse - mean_j z_j) + z_loss * lse^2

    Without a weak head the strong logits alone (coefficient 1); without softcap no tanh. `reduction`: "mean"
    over non-ignored rows (0.0 when there are none), "sum", or "none" ([N], 0 at ignored rows); `num_items`
    (a positive number or a one-element tensor, e.g. the global label-token count) replaces the mean's
    divisor. The loss is float32 and differentiable w.r.t. every input that requires grad; gradients come back
    in each input's dtype. Exact (no gradient filtering), fp32 accumulation, deterministic run to run.

    mode: "lean" (default) recomputes the logits in the backward and keeps extra memory small (lean.py);
    "fast" computes the gradients during the forward, 6NVH of GEMM work instead of 8NVH, at the cost of one
    [chunk, V] workspace and, for batches over one chunk, fp32 dW accumulators (fast.py). Fast needs a scalar
    upstream: with reduction="none" or return_lse=True lean runs. token_chunk: fast mode's rows per chunk
    (None: the backend's default; Triton: the whole batch when its [N, V] workspace fits in 1.5 GiB, else
    4096 rows; torch: 128 MiB fp32 blocks). Smaller chunks trade speed for a smaller [chunk, V] workspace.
    validate=False skips the label-range check (a label outside [0, V) then gives its row a NaN loss).
    """
    args = check_inputs(hidden, weight, labels, weak_hidden, weak_weight)
    opts = LossOptions(lam=lam, ignore_index=ignore_index, reduction=reduction, temperature=temperature,
                       softcap=0.0 if softcap is None else softcap, z_loss=z_loss,
                       label_smoothing=label_smoothing, with_stats=return_stats)
    if softcap is not None and not opts.has_softcap:
        raise ValueError(f"softcap must be > 0 (or None for no cap), got {softcap}")
    vocab, device = args.weight.shape[0], args.hidden.device
    bias = check_bias("bias", bias, vocab, device)
    weak_bias = check_bias("weak_bias", weak_bias, vocab, device, head_given=args.weak_hidden is not None)
    num_items_tensor, num_items_value = check_num_items(num_items, reduction, device)
    check_token_chunk(token_chunk)
    backend = resolve_impl(impl, device)
    run_fast = choose_mode(mode, reduction, return_lse) == "fast"

    grad_inputs = (args.hidden, args.weight, args.weak_hidden, args.weak_weight, bias, weak_bias)
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and x is not None and x.requires_grad for x in grad_inputs]
    loss, _divisor, lse, *rest = torch.ops.wdl_kernels.mixed_ce(
        args.hidden, args.weight, args.labels, args.weak_hidden, args.weak_weight, bias, weak_bias,
        num_items_tensor, num_items_value, opts.lam, opts.ignore_index, opts.reduction, opts.temperature,
        opts.softcap, opts.z_loss, opts.label_smoothing, return_stats, backend, run_fast, needs, validate,
        token_chunk or 0)
    stats = MixedCEStats(lse.detach(), *rest[:6]) if return_stats else None
    return MixedCEOutput(loss, stats, lse if return_lse else None)
