"""The correctness guard every implementation passes before it is timed: one call at a small N with the
case's V and H (and at least 10% ignored rows) against the float64 ground truth of `wdl_kernels.reference`.

Norm-wise relative error ||out - ref|| / ||ref|| of the loss, of every gradient (the worst one), of the entropy
and of the NLL, against per-dtype tolerances. An implementation of ours that fails is never timed.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from wdl_kernels.reference import reference_loss_and_stats

from bench.cases import LossCase, make_inputs
from bench.impls import Impl
from wdl.labels import IGNORE_INDEX

TOLERANCES = {
    "fp32": {"loss": 1e-4, "grad": 1e-3, "entropy": 1e-4, "nll": 1e-4},
    "fp16": {"loss": 2e-3, "grad": 2e-2, "entropy": 2e-3, "nll": 2e-3},
    "bf16": {"loss": 5e-3, "grad": 2e-2, "entropy": 5e-3, "nll": 5e-3},
}
CHECK_COLUMNS = ("check_n", "check_ok", "check_err_loss", "check_err_grad", "check_err_entropy", "check_err_nll")


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp(min=1e-30))


class Checker:
    """Checks each implementation once per case shape (N excluded) against float64 references, which are
    computed on first use and kept until `release()` (call it before timing: they are [n, V] float64)."""

    def __init__(self, device: torch.device, check_n: int, seed: int):
        self.device, self.check_n, self.seed = device, check_n, seed
        self.results: dict[tuple, dict] = {}
        self._references: dict[LossCase, tuple] = {}

    def reference(self, case: LossCase, n: int):
        small = replace(case, n=n, ignore_frac=max(case.ignore_frac, 0.1))
        if small not in self._references:
            inp = make_inputs(small, self.device, self.seed + 7, requires_grad=small.task == "fwdbwd")
            leaves64 = [t.detach().double().requires_grad_() for t in inp.leaves()]
            hs, ws, *weak = leaves64
            hw, ww = weak if weak else (None, None)
            loss, stats = reference_loss_and_stats(hs, ws, inp.labels, hw, ww, lam=small.lam,
                                                   ignore_index=IGNORE_INDEX)
            ref = {"loss": loss.detach(), "entropy": stats.entropy, "nll": stats.nll}
            if small.task == "fwdbwd":
                ref["grads"] = torch.autograd.grad(loss, leaves64)
            self._references[small] = (small, inp, ref)
        return self._references[small]

    def release(self) -> None:
        self._references.clear()

    def check(self, impl: Impl, case: LossCase) -> dict:
        n = impl.check_rows(case, self.check_n)
        key = (impl.name, replace(case, n=n, ignore_frac=max(case.ignore_frac, 0.1)))
        if key in self.results:
            return self.results[key]
        small, inp, ref = self.reference(case, n)
        tol = TOLERANCES[case.dtype]
        out = impl.step(small, inp)()
        errs = {}
        if out.loss is not None:
            errs["loss"] = relative_error(out.loss, ref["loss"])
        if out.grads is not None:
            errs["grad"] = max(relative_error(g, r) for g, r in zip(out.grads, ref["grads"], strict=True))
        if out.entropy is not None:
            errs["entropy"] = relative_error(out.entropy, ref["entropy"])
            errs["nll"] = relative_error(out.nll, ref["nll"])
        finite = all(v == v and v != float("inf") for v in errs.values())
        res = {"check_n": small.n, "check_ok": bool(errs) and finite and all(errs[k] <= tol[k] for k in errs),
               **{f"check_err_{k}": errs.get(k) for k in ("loss", "grad", "entropy", "nll")}}
        self.results[key] = res
        return res
