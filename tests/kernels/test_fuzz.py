"""Property-based fuzzing over shapes, masks, lam, reductions, modes and loss options (hypothesis), both
implementations."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernels.helpers import Case, check_against_reference

cases = st.builds(
    Case,
    n=st.integers(1, 40),
    vocab=st.integers(2, 90),
    hs=st.sampled_from([4, 8, 12, 24, 40]),  # fp32 rows must be 16-byte aligned for TMA: multiples of 4
    hw=st.one_of(st.none(), st.sampled_from([4, 16, 28])),
    lam=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    ignore_frac=st.sampled_from([0.0, 0.2, 0.7, 1.0]),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["lean", "fast"]),
    bias=st.booleans(),
    temperature=st.sampled_from([1.0, 0.7, 2.0]),
    softcap=st.sampled_from([None, None, 5.0]),
    z_loss=st.sampled_from([0.0, 0.0, 1e-3]),
    label_smoothing=st.sampled_from([0.0, 0.0, 0.1]),
)


@pytest.mark.parametrize("impl,examples", [("torch-small", 60), ("triton-small", 25)])
def test_fuzz_against_reference(impl, examples):
    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(case=cases)
    def run(case):
        check_against_reference(case, impl)

    run()
