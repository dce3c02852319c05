"""The GEMM work of each kernel mode, counted by torch on the torch backend (deterministic): fast mode does
6*N*V*(Hs+Hw) (plus 2NV of per-row dot products), lean 8*N*V*(Hs+Hw), a forward 2*N*V*(Hs+Hw), whatever the
chunking."""

from __future__ import annotations

import pytest
import torch
from wdl_kernels.torch_backend import TorchBackend

from bench.cases import LossCase, make_inputs
from bench.flop_count import counted_flops

BACKENDS = {"default": TorchBackend(),
            "tiny-chunks": TorchBackend(chunk_elements=96, max_token_chunk=8, token_chunk=10)}


@pytest.mark.parametrize("backend,hw", [("tiny-chunks", 24), ("default", 0)])
def test_counted_flops_of_each_mode(backend, hw):
    n, v, hs = 37, 101, 16
    case = LossCase(n=n, vocab=v, hs=hs, hw=hw, task="fwdbwd", dtype="fp32", ignore_frac=0.2)
    inp = make_inputs(case, torch.device("cpu"), seed=0, requires_grad=False)
    pass_flops = 2 * n * v * (hs + hw)
    assert counted_flops(case, inp, "fast", BACKENDS[backend]) == 3 * pass_flops + 2 * n * v
    assert counted_flops(case, inp, "lean", BACKENDS[backend]) == 4 * pass_flops
    fwd = LossCase(n=n, vocab=v, hs=hs, hw=hw, task="score", dtype="fp32")
    assert counted_flops(fwd, inp, "lean", BACKENDS[backend]) == pass_flops
    with pytest.raises(ValueError, match="mode"):
        counted_flops(case, inp, "turbo", BACKENDS[backend])
