"""The joint model's loss: cross-entropy of the mixed logits z = lam * z_strong + (1 - lam) * z_weak.

This is the one place where the loss is normalised: a loss returns the SUM of its per-token losses over the
label tokens divided by `num_items`, the divisor the training loop derives from the step's global label-token
count (the sum itself when `num_items` is None, as scoring uses it). Every micro-batch of every rank divides by
the same number, so the update is the token mean of the whole step, however the step is split.

A loss is any callable with `FusedMixedCrossEntropy.__call__`'s signature that returns a `JointOutput`;
`JointModel` uses the fused kernel by default. The end-to-end benchmark plugs in its materialized baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch

import wdl_kernels
from wdl.labels import IGNORE_INDEX
from wdl_kernels import MixedCEStats


class JointOutput(NamedTuple):
    loss: torch.Tensor  # float32 scalar: the summed per-token loss over label tokens / num_items
    stats: MixedCEStats  # per-row float32 statistics of the mixed distribution [N], no grad


class MixedLoss(Protocol):
    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                 weak_hidden: torch.Tensor | None, weak_weight: torch.Tensor | None, *, lam: float,
                 num_items: float | None) -> JointOutput: ...


@dataclass(frozen=True)
class FusedMixedCrossEntropy:
    """`wdl_kernels.mixed_linear_cross_entropy`: the mixed logits tile by tile, never an [N, V] tensor.

    `impl`: the kernel implementation ("auto", "triton", "torch"); `mode`: "lean" recomputes in the backward
    (bounded memory), "fast" computes the gradients in the forward (6NVH of GEMM work instead of 8NVH, more
    memory: see wdl_kernels/fast.py). The kernel divides by `num_items` itself, so in fast mode the gradients
    it computes during the forward are already the step's (the upstream gradient is exactly 1).
    """

    impl: Literal["auto", "triton", "torch"] = "auto"
    mode: Literal["lean", "fast"] = "lean"

    def __call__(self, hidden, weight, labels, weak_hidden=None, weak_weight=None, *, lam, num_items=None):
        out = wdl_kernels.mixed_linear_cross_entropy(
            hidden, weight, labels, weak_hidden, weak_weight, lam=lam, ignore_index=IGNORE_INDEX,
            reduction="sum", return_stats=True, impl=self.impl, mode=self.mode, num_items=num_items,
        )
        return JointOutput(out.loss, out.stats)
