"""nn.Module wrapper around mixed_linear_cross_entropy (options fixed at construction, validated there)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .api import MixedCEOutput, mixed_linear_cross_entropy
from .validation import IMPLS, REDUCTIONS


class MixedLinearCrossEntropy(nn.Module):
    """Loss module: `forward(hidden, weight, labels, weak_hidden=None, weak_weight=None) -> MixedCEOutput`.

    Holds no parameters: pass the lm_head weights (strong, and optionally weak) at call time, so the module can
    sit beside any model (tied embeddings included) without owning or copying its weights.
    """

    def __init__(self, lam: float = 0.5, *, ignore_index: int = -100, reduction: str = "mean",
                 return_stats: bool = False, impl: str = "auto"):
        super().__init__()
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and 0.0 <= lam <= 1.0):
            raise ValueError(f"lam must be a float in [0, 1], got {lam!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.lam, self.ignore_index, self.reduction = float(lam), ignore_index, reduction
        self.return_stats, self.impl = return_stats, impl

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                weak_hidden: torch.Tensor | None = None, weak_weight: torch.Tensor | None = None) -> MixedCEOutput:
        return mixed_linear_cross_entropy(
            hidden, weight, labels, weak_hidden, weak_weight, lam=self.lam, ignore_index=self.ignore_index,
            reduction=self.reduction, return_stats=self.return_stats, impl=self.impl,
        )

    def extra_repr(self) -> str:
        return f"lam={self.lam}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, impl={self.impl!r}"
