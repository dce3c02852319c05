"""The problem description shared by every implementation, and the backend interface.

z = strong_coef * (hidden @ weight.T) + weak_coef * (weak_hidden @ weak_weight.T)
with (strong_coef, weak_coef) = (lam, 1 - lam) when a weak head is given and (1, 0) otherwise. A head whose
coefficient is 0 is skipped entirely (no GEMM, zero gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .stats import Partials


@dataclass(frozen=True)
class Problem:
    hidden: torch.Tensor  # [N, Hs]
    weight: torch.Tensor  # [V, Hs]
    weak_hidden: torch.Tensor | None  # [N, Hw]
    weak_weight: torch.Tensor | None  # [V, Hw]
    labels: torch.Tensor  # [N] int64
    lam: float

    @property
    def n(self) -> int:
        return self.hidden.shape[0]

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    @property
    def has_weak(self) -> bool:
        return self.weak_hidden is not None

    @property
    def strong_coef(self) -> float:
        return self.lam if self.has_weak else 1.0

    @property
    def weak_coef(self) -> float:
        return 1.0 - self.lam if self.has_weak else 0.0

    @property
    def use_strong(self) -> bool:
        return self.strong_coef != 0.0

    @property
    def use_weak(self) -> bool:
        return self.has_weak and self.weak_coef != 0.0


class Backend(Protocol):
    """What an implementation provides; the chunked backward driver (function.py) does the rest."""

    def forward_partials(self, prob: Problem, ignore_index: int, with_stats: bool) -> Partials:
        """Online-softmax partials over the whole vocabulary for every row (stats.py).

        m, s and zy are always exact; t and sumz may be left at 0 when with_stats is False (the loss and its
        gradient need only lse and the target logit).
        """

    def grad_logits(
        self, prob: Problem, r0: int, r1: int, v0: int, v1: int, lse: torch.Tensor, grad_rows: torch.Tensor,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """dL/dz for rows [r0, r1) and vocabulary columns [v0, v1): (softmax(z) - onehot(label)) * grad_rows.

        lse and grad_rows are already restricted to those rows. Written into `out` when given.
        """

    def chunks(self, prob: Problem, n_rows: int) -> tuple[int, int]:
        """(token_chunk, vocab_chunk) for the backward driver."""

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        """dtype of the dL/dz blocks fed to the gradient GEMMs."""
