"""Public entry point: mixed_linear_cross_entropy (contract in the design brief, section 4)."""

from __future__ import annotations

import functools
import os
import warnings
from typing import NamedTuple

import torch

from .function import MixedLinearCrossEntropyFunction, forward_stats, reduce_loss
from .problem import Backend, Problem
from .stats import MixedCEStats
from .torch_impl import TorchBackend
from .validation import IMPLS, check_inputs


class MixedCEOutput(NamedTuple):
    loss: torch.Tensor  # float32; scalar for "mean"/"sum", [N] for "none"
    stats: MixedCEStats | None  # per-row float32 stats of the mixed distribution (no grad), or None


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(impl: str, device: torch.device) -> Backend:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "torch":
        return TorchBackend()
    if not triton_available():
        raise ValueError("impl='triton' needs the triton package: pip install triton, or use impl='torch'")
    if device.type != "cuda" and not interpreter_active():
        raise ValueError(
            f"impl='triton' needs CUDA tensors (got {device}); use impl='torch' on the CPU, "
            "or set TRITON_INTERPRET=1 before importing triton to run the kernels in the interpreter"
        )
    from .triton_impl import TritonBackend

    return TritonBackend.for_device(device)


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"wdl_kernels: using the chunked torch implementation: {reason}", stacklevel=3)


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
) -> MixedCEOutput:
    """Cross-entropy of z = lam * hidden @ weight.T + (1 - lam) * weak_hidden @ weak_weight.T, never holding [N, V].

    Without a weak head, z = hidden @ weight.T. `reduction` is "mean" over non-ignored rows (0.0 when there
    are none), "sum", or "none" ([N], 0 at ignored rows). The loss is float32 and differentiable w.r.t. every
    input that requires grad; gradients come back in each input's dtype. Exact (no gradient filtering), fp32
    accumulation, deterministic run to run.
    """
    args = check_inputs(
        hidden, weight, labels, weak_hidden, weak_weight, lam=lam, ignore_index=ignore_index, reduction=reduction
    )
    backend = select_backend(impl, args.hidden.device)
    if not isinstance(backend, TorchBackend):
        reason = backend.unsupported_reason(
            [("hidden", args.hidden), ("weight", args.weight), ("weak_hidden", args.weak_hidden),
             ("weak_weight", args.weak_weight)])
        if reason is not None:
            if impl == "triton":
                raise ValueError(reason)
            _warn_fallback(reason)
            backend = TorchBackend()
    return _mixed_ce(args.hidden, args.weight, args.labels, args.weak_hidden, args.weak_weight, args.lam,
                     ignore_index, reduction, return_stats, backend)


def _mixed_ce(hidden, weight, labels, weak_hidden, weak_weight, lam, ignore_index, reduction, return_stats,
              backend: Backend) -> MixedCEOutput:
    """Validated (contiguous) inputs, explicit backend (tests use this to force tiny chunks and tiles)."""
    inputs = (hidden, weight, weak_hidden, weak_weight)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if needs_grad:
        loss, *stats = MixedLinearCrossEntropyFunction.apply(
            hidden, weight, weak_hidden, weak_weight, labels, lam, ignore_index, reduction, return_stats, backend
        )
        stats = MixedCEStats(*stats)
    else:  # forward-only fast path (scoring): nothing saved for backward
        with torch.no_grad():
            stats, valid = forward_stats(Problem(*inputs, labels, lam), backend, ignore_index, return_stats)
            loss = reduce_loss(stats.nll, valid, reduction)
    return MixedCEOutput(loss, stats if return_stats else None)
