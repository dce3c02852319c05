"""torch.compile(fullgraph=True) traces a function that calls the loss with no graph break (the loss is a
torch.library custom op), in both modes, and gives the eager results."""

from __future__ import annotations

import pytest
import torch

import wdl_kernels
from tests.kernels.helpers import IMPLS


@pytest.mark.parametrize("impl", ("torch",) + IMPLS)
@pytest.mark.parametrize("mode", ["lean", "fast"])
def test_fullgraph_compile_equals_eager(mode, impl):
    g = torch.Generator().manual_seed(0)
    n, v, hs, hw = 24, 70, 16, 8
    xs = [torch.randn(n, hs, generator=g), torch.randn(v, hs, generator=g) * 0.3,
          torch.randn(n, hw, generator=g), torch.randn(v, hw, generator=g) * 0.3]
    bias = torch.randn(v, generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = -100

    def step(hidden, weight, weak_hidden, weak_weight, b):
        out = wdl_kernels.mixed_linear_cross_entropy(hidden, weight, y, weak_hidden, weak_weight, bias=b, lam=0.4,
                                                     mode=mode, impl=impl, return_stats=True, z_loss=1e-3,
                                                     num_items=17)
        return out.loss * 3 + 0.0 * out.stats.entropy.sum(), out.stats.margin

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [x.clone().requires_grad_() for x in (*xs, bias)]
        loss, margin = fn(*leaves)
        loss.backward()
        results.append([loss.detach(), margin, *(x.grad for x in leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
