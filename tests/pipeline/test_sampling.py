"""Sampling weights against hand-computed cases, their input checks and properties, and seeded resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wdl.sampling import brownboost_weights, resample, sampling_weights

H0 = [1.0, 2.0, 3.0, 2.0]  # weak (base)
H1 = [0.5, 2.5, 1.0, 2.0]  # strong (SFT); dH = [-0.5, 0.5, -2, 0]


def test_v1_hand_computed():
    # sum(H0)=8, sum([-dH]+)=2.5, sum([dH]+)=0.5
    expected = [
        0.1 * 1 / 8 + 0.8 * 0.5 / 2.5,  # 0.1725
        0.1 * 2 / 8 + 0.1 * 0.5 / 0.5,  # 0.125
        0.1 * 3 / 8 + 0.8 * 2.0 / 2.5,  # 0.6775
        0.1 * 2 / 8,  # 0.025
    ]
    p = sampling_weights(H0, H1)  # v1 with 0.1/0.8/0.1 is the default
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p, [0.1725, 0.125, 0.6775, 0.025], atol=1e-15)


def test_v1_argparse_defaults_differ():
    p = sampling_weights(H0, H1, scheme="v1", alpha=0.2, beta=0.7, gamma=0.1)
    np.testing.assert_allclose(p[3], 0.2 * 2 / 8, atol=1e-15)
    np.testing.assert_allclose(p[2], 0.2 * 3 / 8 + 0.7 * 2 / 2.5, atol=1e-15)


def test_v2_hand_computed():
    # p ∝ 0.1*[-dH]+ + 0.8*H1 + 0.1*[dH]+ = [0.45, 2.05, 1.0, 1.6], sum 5.1
    p = sampling_weights(H0, H1, scheme="v2")
    np.testing.assert_allclose(p, np.array([0.45, 2.05, 1.0, 1.6]) / 5.1, rtol=1e-14)


def test_v1_zero_sum_term_is_dropped_not_nan():
    # dH = 0 everywhere: both difference terms have a zero normaliser (replaced by 1e-12) and contribute 0.
    p = sampling_weights([1.0, 3.0], [1.0, 3.0])
    np.testing.assert_allclose(p, [0.25, 0.75], atol=1e-15)


def test_all_zero_falls_back_to_uniform():
    np.testing.assert_array_equal(sampling_weights([0, 0, 0], [0, 0, 0]), [1 / 3] * 3)
    np.testing.assert_array_equal(sampling_weights([0, 0, 0], [0, 0, 0], scheme="v2"), [1 / 3] * 3)
    # alpha only and no base entropy: v1 has nothing to weigh either
    np.testing.assert_array_equal(sampling_weights([0, 0], [1, 2], alpha=1, beta=0, gamma=0), [0.5, 0.5])


def test_single_term_selects_that_signal():
    # beta only: "consolidation" = samples whose entropy dropped, proportional to the drop
    p = sampling_weights(H0, H1, alpha=0, beta=1, gamma=0)
    np.testing.assert_allclose(p, [0.2, 0.0, 0.8, 0.0], atol=1e-15)
    p = sampling_weights(H0, H1, scheme="v2", alpha=0, beta=0, gamma=1)
    np.testing.assert_allclose(p, [0.0, 1.0, 0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize(
    ("weak", "strong", "kwargs", "match"),
    [
        ([1.0, float("nan")], [1.0, 1.0], {}, "weak_entropy: has 1 non-finite"),
        ([1.0, 1.0], [1.0, float("inf")], {}, "strong_entropy: has 1 non-finite"),
        ([1.0, -0.1], [1.0, 1.0], {}, "weak_entropy: entropies cannot be negative"),
        ([1.0, 1.0, 1.0], [1.0, 1.0], {}, "same length"),
        ([], [], {}, "is empty"),
        ([[1.0]], [[1.0]], {}, "1-D"),
        ([1.0], [1.0], {"alpha": -0.1}, "alpha: must be a finite number >= 0"),
        ([1.0], [1.0], {"gamma": float("nan")}, "gamma"),
        ([1.0], [1.0], {"scheme": "v3"}, "scheme: must be 'v1' or 'v2'"),
        ([1.0], [1.0], {"scheme": "brownboost"}, "brownboost_weights"),
        (["a"], [1.0], {}, "weak_entropy: expected a 1-D array of floats"),
    ],
)
def test_bad_inputs_raise(weak, strong, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling_weights(weak, strong, **kwargs)


def test_brownboost_hand_computed_penalties():
    # e0 = e1 = e2: no improvement (trend 1); quantiles of e2: tau_e = 0.8, tau_h = 3.2.
    e = [0.0, 1.0, 2.0, 3.0, 4.0]
    eps = 1e-8
    d = [min(max((x - 0.8) / (2.4 + eps), 0.0), 1.0) + eps for x in e]
    # sample 4 is above tau_h in all 3 rounds (> patience 2): exp(-1); sample 0 below tau_e in 3 rounds: exp(-1)
    w = [max(d[0] * math.exp(-1), eps), d[1], d[2], d[3], d[4] * math.exp(-1)]
    p = brownboost_weights(e, e, e)
    np.testing.assert_allclose(p, np.array(w) / sum(w), rtol=1e-12)


def test_brownboost_hand_computed_trend():
    # e2 = [0, 2] -> tau_e 0.4, tau_h 1.6, d = [eps, 1 + eps]; improvement e0 - e2 = [2, -2], std 2,
    # trend = [1.5, 0.5]; every sample is hard/easy in at most 1 round (<= patience): no penalties.
    eps = 1e-8
    t = 0.5 * 2 / (2 + eps)  # 0.5 * improvement / (std + eps)
    w = [max(eps * (1 + t), eps), (1 + eps) * (1 - t)]
    p = brownboost_weights([2.0, 0.0], [1.0, 1.0], [0.0, 2.0])
    np.testing.assert_allclose(p, np.array(w) / sum(w), rtol=1e-12)
    # alpha/beta/gamma are exponents: beta = 0 removes the trend
    p = brownboost_weights([2.0, 0.0], [1.0, 1.0], [0.0, 2.0], beta=0.0)
    np.testing.assert_allclose(p, np.array([eps, 1 + eps]) / (1 + 2 * eps), rtol=1e-12)


def test_brownboost_needs_three_equal_columns():
    with pytest.raises(ValueError, match="same length"):
        brownboost_weights([1.0, 2.0], [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="easy_quantile"):
        brownboost_weights([1.0], [1.0], [1.0], easy_quantile=0.9, hard_quantile=0.1)
    with pytest.raises(ValueError, match="patience"):
        brownboost_weights([1.0], [1.0], [1.0], patience=-1)


entropies = arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 20, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(
    entropies,
    st.data(),
    st.sampled_from(["v1", "v2"]),
    st.tuples(*[st.floats(0, 5, allow_nan=False)] * 3),
)
def test_properties(weak, data, scheme, coeffs):
    strong = data.draw(arrays(np.float64, weak.shape, elements=st.floats(0, 20, allow_nan=False)))
    p = sampling_weights(weak, strong, scheme, *coeffs)
    assert p.shape == weak.shape and p.dtype == np.float64
    assert (p >= 0).all()
    assert math.isclose(p.sum(), 1.0, rel_tol=0, abs_tol=1e-12)
    np.testing.assert_array_equal(p, sampling_weights(weak.copy(), strong.copy(), scheme, *coeffs))


@settings(max_examples=60, deadline=None)
@given(entropies, st.data())
def test_brownboost_properties(e0, data):
    e1 = data.draw(arrays(np.float64, e0.shape, elements=st.floats(0, 20, allow_nan=False)))
    e2 = data.draw(arrays(np.float64, e0.shape, elements=st.floats(0, 20, allow_nan=False)))
    p = brownboost_weights(e0, e1, e2)
    assert (p > 0).all() and math.isclose(p.sum(), 1.0, abs_tol=1e-12)


def test_resample_seeded_counts_and_dedup():
    ids = np.array([10, 11, 12, 13, 14])
    p = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    r = resample(ids, p, size=20, seed=42)
    assert r.ids.size == 20 and set(r.ids.tolist()) <= {10, 11}
    assert r.n_unique == len(set(r.ids.tolist())) == 2 and r.n_duplicates == 18
    # same as the reference's draw: np.random.default_rng(seed).choice(n, size, replace=True, p=p)
    expected = ids[np.random.default_rng(42).choice(5, size=20, replace=True, p=p)]
    np.testing.assert_array_equal(r.ids, expected)
    d = resample(ids, p, size=20, seed=42, dedup=True)
    assert d.n_unique == 2 and d.n_duplicates == 18 and d.dedup
    np.testing.assert_array_equal(d.ids, list(dict.fromkeys(expected.tolist())))  # first-draw order
    assert "2 unique, 18 duplicates (removed)" in d.summary()


def test_resample_deterministic_and_seed_sensitive():
    ids = np.arange(100)
    p = np.full(100, 0.01)
    a = resample(ids, p, 100, seed=1)
    np.testing.assert_array_equal(a.ids, resample(ids, p, 100, seed=1).ids)
    assert not np.array_equal(a.ids, resample(ids, p, 100, seed=2).ids)
    assert a.n_unique + a.n_duplicates == 100
    assert a.n_unique == np.unique(a.ids).size


@pytest.mark.parametrize(
    ("ids", "p", "size", "match"),
    [
        ([1, 2], [1.0], 2, "one probability per id"),
        ([1, 2], [0.0, 0.0], 2, "not all zero"),
        ([1, 2], [0.5, -0.5], 2, ">= 0"),
        ([1, 2], [0.5, 0.5], 0, "size: must be an integer >= 1"),
        ([], [], 1, "non-empty"),
    ],
)
def test_resample_bad_inputs(ids, p, size, match):
    with pytest.raises(ValueError, match=match):
        resample(ids, p, size, seed=0)


@pytest.mark.parametrize(
    "coeffs",
    [
        dict(alpha=1e300),
        dict(beta=1e300),
        dict(gamma=1e300),
        dict(alpha=1e308, beta=1e308, gamma=1e308, lambda_time=1e308, lambda_easy=1e308),
        dict(lambda_time=1e300),
    ],
)
def test_huge_finite_coefficients_give_probabilities_not_nan(coeffs):
    """Values a config accepts (finite) never make NaN weights hours into a run (issue 12)."""
    rng = np.random.default_rng(0)
    e0, e1, e2 = (rng.random(50) * 3 + 0.1 for _ in range(3))
    p = brownboost_weights(e0, e1, e2, **coeffs)
    assert np.isfinite(p).all() and (p >= 0).all() and math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    linear = {k: v for k, v in coeffs.items() if k in ("alpha", "beta", "gamma")}
    for scheme in ("v1", "v2"):
        p = sampling_weights(e0, e1, scheme, **linear)
        assert np.isfinite(p).all() and math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    # huge linear coefficients mean the same as their ratios
    big = sampling_weights(e0, e1, "v2", alpha=1e308, beta=1e308, gamma=1e308)
    np.testing.assert_allclose(big, sampling_weights(e0, e1, "v2", alpha=1, beta=1, gamma=1), rtol=1e-12)
