"""One call's tensors and options, and the interface every implementation (backend) provides.

z = strong_coef * (hidden @ weight.T) + weak_coef * (weak_hidden @ weak_weight.T) + bias, then the options'
temperature and softcap (options.py). (strong_coef, weak_coef) = (lam, 1 - lam) with a weak head and (1, 0)
without; a head whose coefficient is 0 is skipped entirely (no GEMM, zero gradients). `bias` is the two heads'
biases already mixed and divided by the temperature ((strong_coef * b_s + weak_coef * b_w) / T), float32 [V],
or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .options import LossOptions
from .stats import Partials


@dataclass(frozen=True)
class Problem:
    hidden: torch.Tensor  # [N, Hs]
    weight: torch.Tensor  # [V, Hs]
    weak_hidden: torch.Tensor | None  # [N, Hw]
    weak_weight: torch.Tensor | None  # [V, Hw]
    labels: torch.Tensor  # [N] int64
    bias: torch.Tensor | None  # [V] float32, mixed, / temperature
    opts: LossOptions

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
        return self.opts.lam if self.has_weak else 1.0

    @property
    def weak_coef(self) -> float:
        return 1.0 - self.opts.lam if self.has_weak else 0.0

    @property
    def use_strong(self) -> bool:
        return self.strong_coef != 0.0

    @property
    def use_weak(self) -> bool:
        return self.has_weak and self.weak_coef != 0.0

    def rows(self, r0: int, r1: int) -> "Problem":
        """The same problem restricted to rows [r0, r1) (views, no copies)."""
        weak = None if self.weak_hidden is None else self.weak_hidden[r0:r1]
        return Problem(self.hidden[r0:r1], self.weight, weak, self.weak_weight, self.labels[r0:r1], self.bias,
                       self.opts)


class Backend(Protocol):
    """What an implementation provides; the mode drivers (lean.py, fast.py) do the rest.

    Row coefficients: G = gcoef[r] * dLoss_r/dz_raw + lcoef[r] * p (the lse's upstream, lean mode only), times
    `grad_scale(prob)` (a power of two that keeps fp16 G in range; the drivers divide it out in fp32).
    """

    name: str

    def forward_partials(self, prob: Problem, with_stats: bool) -> Partials:
        """Online-softmax partials over the whole vocabulary for every row (stats.py). m, s, sumz and zy are
        always exact; t may be left at 0 when with_stats is False."""

    def grad_block(self, prob: Problem, r0: int, r1: int, v0: int, v1: int, lse: torch.Tensor,
                   gcoef: torch.Tensor, lcoef: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
        """Lean mode: recompute z for rows [r0, r1) x columns [v0, v1) and return G (row vectors restricted
        to those rows), written into `out` when given."""

    def new_fast_workspace(self, prob: Problem, rows: int):
        """Fast mode: buffers for one chunk of `rows` rows, reused by every fast_block of the call."""

    def fast_block(self, prob: Problem, r0: int, r1: int, with_stats: bool, workspace
                   ) -> tuple[Partials, torch.Tensor]:
        """Fast mode: partials of rows [r0, r1) and G for those rows over the whole vocabulary (gcoef = 1 at
        valid rows), [r1 - r0, V] in grad_dtype (a view into the workspace)."""

    def lean_chunks(self, prob: Problem) -> tuple[int, int]:
        """(token_chunk, vocab_chunk) of the lean backward."""

    def fast_token_chunk(self, prob: Problem) -> int:
        """Rows per fast-mode chunk."""

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        """dtype of the G blocks fed to the gradient GEMMs."""

    def grad_scale(self, prob: Problem) -> float:
        """Power of two G is stored multiplied by."""
