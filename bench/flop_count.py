"""The GEMM work a kernel mode really does, counted by torch.utils.flop_counter on the torch backend.

The public loss is a torch.library custom op, which a FlopCounterMode sees as one opaque call, so the count
runs the mode drivers directly (`wdl_kernels.fast.forward_with_grads`, `wdl_kernels.lean.forward` +
`lean.backward`) with the same Problem the op builds: every matrix product they issue is an aten op the
counter sees. Expected, for N rows, V columns and hidden sizes Hs + Hw:

    fast  (fwdbwd)       6 N V (Hs + Hw)     logits, d hidden, d weight; no recompute
    lean  (fwdbwd)       8 N V (Hs + Hw)     the backward recomputes the logits
    lean  (fwd, score)   2 N V (Hs + Hw)

plus 2 N V for the torch backend's per-row dot product in fast mode (a [1, V] x [V, 1] bmm per row).
torch's counter has no formula for the in-place `addmm_` the drivers accumulate with; it is added here.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from wdl_kernels import fast, lean
from wdl_kernels.options import LossOptions
from wdl_kernels.problem import Problem

from bench.cases import LossCase, LossInputs
from wdl.labels import IGNORE_INDEX


def _inplace_addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


COUNTED = {torch.ops.aten.addmm_: _inplace_addmm_flops}


def counted_flops(case: LossCase, inp: LossInputs, mode: str, backend) -> int:
    """FLOPs torch counts for one call of `mode` ("lean" or "fast") on `backend` (a torch-backend object)."""
    opts = LossOptions(lam=case.lam, ignore_index=IGNORE_INDEX, reduction="mean", with_stats=case.task == "score")
    leaves = [t.detach() for t in inp.leaves()]
    hidden, weight, *weak = leaves
    weak_hidden, weak_weight = weak if weak else (None, None)
    prob = Problem(hidden, weight, weak_hidden, weak_weight, inp.labels, None, opts)
    valid = inp.labels != IGNORE_INDEX
    divisor = valid.sum().clamp(min=1).to(torch.float32)
    needs = [True, True, weak_hidden is not None, weak_weight is not None, False, False]
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
        if case.task != "fwdbwd":
            lean.forward(prob, backend, opts.with_stats)
        elif mode == "fast":
            fast.forward_with_grads(prob, backend, False, needs, (None, None), divisor)
        elif mode == "lean":
            stats, _ = lean.forward(prob, backend, False)
            grad_rows = torch.where(valid, 1.0 / divisor, torch.zeros((), dtype=torch.float32))
            lean.backward(prob, backend, stats.lse, grad_rows, None, needs, (None, None))
        else:
            raise ValueError(f"mode must be 'lean' or 'fast', got {mode!r}")
    return int(counter.get_total_flops())
