"""What the loss benchmark measures: the cases (shape x task), their random inputs and the FLOP counts.

Tasks:
    fwd     loss only, no autograd (torch.no_grad)                                FLOPs 2*N*V*(Hs+Hw)
    fwdbwd  loss and the gradients of every input (torch.autograd.grad)           FLOPs 6*N*V*(Hs+Hw)
    score   per-row entropy and NLL, no autograd: the entropy-scoring phase       FLOPs 2*N*V*(Hs+Hw)

6*N*V*H is the convention of the fused-linear-CE literature (forward logits GEMM, d hidden GEMM, d weight
GEMM); designs that recompute the logits in the backward do 8*N*V*H of work but are counted on 6 as well,
so TFLOP/s compare time to solution. Two heads: H -> Hs + Hw (two logit GEMMs, four gradient GEMMs). The
GEMM work an implementation actually does is counted separately (`flops_counted`, bench/flop_count.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from wdl.labels import IGNORE_INDEX

TASKS = ("fwd", "fwdbwd", "score")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def nominal_flops(n: int, vocab: int, sum_hidden: int, task: str) -> int:
    """FLOPs a call is rated on: 6*N*V*(Hs+Hw) for fwdbwd, 2*N*V*(Hs+Hw) for fwd and score."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return (6 if task == "fwdbwd" else 2) * n * vocab * sum_hidden


def gemm_flops(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


@dataclass(frozen=True)
class LossCase:
    n: int  # tokens
    vocab: int
    hs: int  # strong hidden size
    hw: int  # weak hidden size; 0 = single head
    task: str
    dtype: str = "bf16"
    lam: float = 0.5
    ignore_frac: float = 0.0  # fraction of rows labelled IGNORE_INDEX (part of the label: a distinct case)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if min(self.n, self.vocab, self.hs) < 1 or self.hw < 0:
            raise ValueError(f"sizes must be positive (hw may be 0 for one head): {self}")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.ignore_frac < 1.0:
            raise ValueError(f"need lam in [0, 1] and ignore_frac in [0, 1): {self}")

    @property
    def heads(self) -> int:
        return 2 if self.hw else 1

    @property
    def sum_hidden(self) -> int:
        return self.hs + self.hw

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def flops(self) -> int:
        return nominal_flops(self.n, self.vocab, self.sum_hidden, self.task)

    def with_n(self, n: int) -> "LossCase":
        return replace(self, n=n)

    def label(self) -> str:
        heads = f"2x{self.hs}" if self.hw == self.hs else (f"{self.hs}+{self.hw}" if self.hw else f"1x{self.hs}")
        ignored = f" ignore={self.ignore_frac:g}" if self.ignore_frac else ""
        return f"{self.task} {heads} N={self.n} V={self.vocab} {self.dtype}{ignored}"


@dataclass
class LossInputs:
    hidden: torch.Tensor
    weight: torch.Tensor
    weak_hidden: torch.Tensor | None
    weak_weight: torch.Tensor | None
    labels: torch.Tensor

    def leaves(self) -> list[torch.Tensor]:
        """The float inputs in a fixed order: hidden, weight, weak_hidden, weak_weight (those present)."""
        return [t for t in (self.hidden, self.weight, self.weak_hidden, self.weak_weight) if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.leaves(), self.labels))


def _fill_(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        t.normal_(0.0, std, generator=gen)


def _labels(n: int, vocab: int, ignore_frac: float, device, gen: torch.Generator) -> torch.Tensor:
    y = torch.randint(0, vocab, (n,), device=device, generator=gen)
    if ignore_frac > 0:
        drop = torch.rand(n, device=device, generator=gen) < ignore_frac
        y = torch.where(drop, torch.full_like(y, IGNORE_INDEX), y)
    return y


def make_inputs(case: LossCase, device: torch.device, seed: int, requires_grad: bool) -> LossInputs:
    """Random inputs: hidden ~ N(0, 1) (post-norm activations), weight ~ N(0, 1/H) (logits of std ~1 per head).

    Never zeros: zeros hide unwritten outputs and can run faster than real data.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    dt = case.torch_dtype

    def tensor(rows, cols, std):
        t = torch.empty(rows, cols, dtype=dt, device=device)
        _fill_(t, std, gen)
        return t.requires_grad_(requires_grad)

    hidden, weight = tensor(case.n, case.hs, 1.0), tensor(case.vocab, case.hs, case.hs ** -0.5)
    weak_hidden = tensor(case.n, case.hw, 1.0) if case.hw else None
    weak_weight = tensor(case.vocab, case.hw, case.hw ** -0.5) if case.hw else None
    labels = _labels(case.n, case.vocab, case.ignore_frac, device, gen)
    return LossInputs(hidden, weight, weak_hidden, weak_weight, labels)


def refresh_inputs(inp: LossInputs, gen: torch.Generator) -> None:
    """New random values in place (same scales; ignored rows stay ignored), so no repetition reuses data."""
    for hidden, weight in ((inp.hidden, inp.weight), (inp.weak_hidden, inp.weak_weight)):
        if hidden is not None:
            _fill_(hidden, 1.0, gen)
            _fill_(weight, weight.shape[1] ** -0.5, gen)
    ignored = inp.labels == IGNORE_INDEX
    fresh = torch.randint(0, inp.weight.shape[0], inp.labels.shape, device=inp.labels.device, generator=gen)
    inp.labels.copy_(torch.where(ignored, inp.labels, fresh))


class StepOut(NamedTuple):
    loss: torch.Tensor | None = None  # scalar (mean over non-ignored rows)
    grads: tuple[torch.Tensor, ...] | None = None  # in LossInputs.leaves() order
    entropy: torch.Tensor | None = None  # [N] score task
    nll: torch.Tensor | None = None  # [N] score task (0 at ignored rows)
