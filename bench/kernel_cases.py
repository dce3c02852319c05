"""What the kernel benchmark measures: the cases (shapes x modes), their random inputs, the FLOP counts, and
the correctness guard every implementation passes before it is timed.

Modes:
    fwd     loss only, no autograd (torch.no_grad)                                FLOPs 2*N*V*(Hs+Hw)
    fwdbwd  loss and the gradients of every input (torch.autograd.grad)           FLOPs 6*N*V*(Hs+Hw)
    score   per-row entropy and NLL, no autograd: the entropy-scoring phase       FLOPs 2*N*V*(Hs+Hw)

6*N*V*H is the convention of the fused-linear-CE literature (forward logits GEMM, d hidden GEMM, d weight
GEMM); designs that recompute the logits in the backward do 8*N*V*H of work but are counted on 6 as well,
so TFLOP/s compare time to solution. Two heads: H -> Hs + Hw (two logit GEMMs, four gradient GEMMs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from bench.kernel_impls import Impl

IGNORE_INDEX = -100
MODES = ("fwd", "fwdbwd", "score")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def kernel_flops(n: int, vocab: int, sum_hidden: int, mode: str) -> int:
    """FLOPs counted for one call: 6*N*V*(Hs+Hw) for fwdbwd, 2*N*V*(Hs+Hw) for fwd and score."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return (6 if mode == "fwdbwd" else 2) * n * vocab * sum_hidden


def gemm_flops(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


@dataclass(frozen=True)
class Case:
    n: int  # tokens
    vocab: int
    hs: int  # strong hidden size
    hw: int  # weak hidden size; 0 = single head
    mode: str
    dtype: str = "bf16"
    lam: float = 0.5
    ignore_frac: float = 0.0  # fraction of rows labelled IGNORE_INDEX

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
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
        return kernel_flops(self.n, self.vocab, self.sum_hidden, self.mode)

    def with_n(self, n: int) -> "Case":
        return replace(self, n=n)

    def label(self) -> str:
        heads = f"2x{self.hs}" if self.hw == self.hs else (f"{self.hs}+{self.hw}" if self.hw else f"1x{self.hs}")
        return f"{self.mode} {heads} N={self.n} V={self.vocab} {self.dtype}"


@dataclass
class Inputs:
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


def make_inputs(case: Case, device: torch.device, seed: int, requires_grad: bool) -> Inputs:
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
    return Inputs(hidden, weight, weak_hidden, weak_weight, _labels(case.n, case.vocab, case.ignore_frac, device, gen))


def refresh_inputs(inp: Inputs, gen: torch.Generator) -> None:
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
    grads: tuple[torch.Tensor, ...] | None = None  # in Inputs.leaves() order
    entropy: torch.Tensor | None = None  # [N] score mode
    nll: torch.Tensor | None = None  # [N] score mode (0 at ignored rows)


# --------------------------------------------------------------------------------------------------------
# Correctness guard

# Norm-wise relative error allowed against the float64 reference (loss, gradients, entropy, nll).
TOLERANCES = {
    "fp32": {"loss": 1e-4, "grad": 1e-3, "entropy": 1e-4, "nll": 1e-4},
    "fp16": {"loss": 2e-3, "grad": 2e-2, "entropy": 2e-3, "nll": 2e-3},
    "bf16": {"loss": 5e-3, "grad": 2e-2, "entropy": 5e-3, "nll": 5e-3},
}

def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp(min=1e-30))


class Checker:
    """Checks each implementation once per (shape without N, mode) against the float64 reference of
    wdl_kernels.reference at N = check_n, with at least 10% ignored rows."""

    def __init__(self, device: torch.device, check_n: int, seed: int):
        self.device, self.check_n, self.seed = device, check_n, seed
        self.cache: dict[tuple, dict] = {}

    def key(self, impl: Impl, case: Case) -> tuple:
        return (impl.name, case.mode, case.vocab, case.hs, case.hw, case.dtype, case.lam, case.ignore_frac)

    def _reference(self, case: Case):
        from wdl_kernels.reference import reference_loss_and_stats

        small = replace(case, n=min(self.check_n, case.n), ignore_frac=max(case.ignore_frac, 0.1))
        inp = make_inputs(small, self.device, self.seed + 7, requires_grad=small.mode == "fwdbwd")
        leaves64 = [t.detach().double().requires_grad_() for t in inp.leaves()]
        hs, ws, *weak = leaves64
        hw, ww = weak if weak else (None, None)
        loss, stats = reference_loss_and_stats(hs, ws, inp.labels, hw, ww, lam=small.lam, ignore_index=-100)
        ref = {"loss": loss.detach(), "entropy": stats.entropy, "nll": stats.nll}
        if small.mode == "fwdbwd":
            ref["grads"] = torch.autograd.grad(loss, leaves64)
        return small, inp, ref

    def check(self, impl: Impl, case: Case, reference) -> dict:
        key = self.key(impl, case)
        if key in self.cache:
            return self.cache[key]
        small, inp, ref = reference()
        tol = TOLERANCES[case.dtype]
        out = impl.step(small, inp)()
        errs = {}
        if out.loss is not None:
            errs["loss"] = _rel(out.loss, ref["loss"])
        if out.grads is not None:
            errs["grad"] = max(_rel(g, r) for g, r in zip(out.grads, ref["grads"], strict=True))
        if out.entropy is not None:
            errs["entropy"] = _rel(out.entropy, ref["entropy"])
            errs["nll"] = _rel(out.nll, ref["nll"])
        finite = all(v == v and v != float("inf") for v in errs.values())
        res = {"check_n": small.n, "check_ok": bool(errs) and finite and all(errs[k] <= tol[k] for k in errs),
               **{f"check_err_{k}": errs.get(k) for k in ("loss", "grad", "entropy", "nll")}}
        self.cache[key] = res
        return res


class LazyReference:
    """Computes the reference for a case on first use; dropped before timing so it holds no memory there."""

    def __init__(self, checker: Checker, case: Case):
        self.checker, self.case, self.value = checker, case, None

    def __call__(self):
        if self.value is None:
            self.value = self.checker._reference(self.case)
        return self.value


