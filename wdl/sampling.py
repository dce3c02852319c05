"""Entropy-based sampling weights (WD-DS) and seeded resampling.

Notation: H_weak = per-sample mean token entropy of the weak model (the base M0), H_strong = that of the
strong model (the SFT model M1), dH = H_strong - H_weak, [u]+ = max(u, 0).

- `scheme="v1"`: what the reference pipeline runs (`compute_adaboost_sampling_weights`):
  p = a*H_weak/sum(H_weak) + b*[-dH]+/sum([-dH]+) + c*[dH]+/sum([dH]+), every zero sum replaced by 1e-12,
  so p is a mixture of three distributions with weights a : b : c ("base difficulty", "consolidation",
  "regression repair").
- `scheme="v2"`: the paper's Eq. 9, p ∝ a*[-dH]+ + b*H_strong + c*[dH]+, no per-term normalisation.
- `brownboost_weights`: the reference's BrownBoost-style variant over three entropy columns (oldest model
  first); the reference pipeline never produced its third column, so it is a separate function with that
  column as a required argument.

Every scheme ends the same way: negative scores are clipped to 0, the result is normalised to sum 1, and an
all-zero result falls back to uniform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("v1", "v2", "brownboost")
_ZERO_SUM = 1e-12  # the reference's replacement for a zero normaliser
_EPS = 1e-8  # the reference's epsilon in the BrownBoost variant


def _entropy_array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a 1-D array of floats ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: is empty; sampling weights need at least one sample")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: has {int(bad.sum())} non-finite value(s) (first at position {i}: {a[i]})")
    if (a < 0).any():
        i = int(np.flatnonzero(a < 0)[0])
        raise ValueError(f"{name}: entropies cannot be negative (position {i}: {a[i]})")
    return a


def _coefficient(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return v


def _normalise(scores: np.ndarray) -> np.ndarray:
    w = np.maximum(scores, 0.0)
    total = w.sum()
    if not total > 0:
        return np.full(w.shape, 1.0 / w.size)
    return w / total


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: v.size for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"entropy arrays must have the same length, got {lengths}")


def sampling_weights(
    weak_entropy,
    strong_entropy,
    scheme: str = "v1",
    alpha: float = 0.1,
    beta: float = 0.8,
    gamma: float = 0.1,
) -> np.ndarray:
    """Per-sample sampling probabilities (float64, >= 0, summing to 1) from weak and strong entropies."""
    if scheme == "brownboost":
        raise ValueError(
            "scheme 'brownboost' needs a third entropy column: call wdl.sampling.brownboost_weights(e0, e1, e2)"
        )
    if scheme not in ("v1", "v2"):
        raise ValueError(f"scheme: must be 'v1' or 'v2', got {scheme!r}")
    h_weak = _entropy_array(weak_entropy, "weak_entropy")
    h_strong = _entropy_array(strong_entropy, "strong_entropy")
    _same_length(weak_entropy=h_weak, strong_entropy=h_strong)
    a, b, c = (_coefficient(v, n) for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")))

    dh = h_strong - h_weak
    drop = np.maximum(-dh, 0.0)  # strong is more certain than weak: "consolidation"
    rise = np.maximum(dh, 0.0)  # strong is less certain than weak: "regression repair"

    def scores(a: float, b: float, c: float) -> np.ndarray:
        if scheme == "v1":
            return (
                a * h_weak / (h_weak.sum() or _ZERO_SUM)
                + b * drop / (drop.sum() or _ZERO_SUM)
                + c * rise / (rise.sum() or _ZERO_SUM)
            )
        return a * drop + b * h_strong + c * rise

    with np.errstate(over="ignore", invalid="ignore"):
        s = scores(a, b, c)
        if not np.isfinite(s.sum()):  # huge coefficients overflowed: p is the same for (a, b, c) / max
            top = max(a, b, c)
            s = scores(a / top, b / top, c / top)
    return _normalise(s)


def brownboost_weights(
    entropy_0,
    entropy_1,
    entropy_2,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    easy_quantile: float = 0.2,
    hard_quantile: float = 0.8,
    patience: int = 2,
    easy_patience: int = 2,
    lambda_time: float = 1.0,
    lambda_easy: float = 1.0,
) -> np.ndarray:
    """The reference's `compute_sampling_weights_brownboost_style` over three models' entropies.

    `entropy_0` is the oldest model (the base), `entropy_2` the newest. With tau_e / tau_h the easy / hard
    quantiles of entropy_2:
      difficulty d = clip((e2 - tau_e) / (tau_h - tau_e + eps), 0, 1) + eps
      trend      t = clip(1 + 0.5 * (e0 - e2) / (std(e0 - e2) + eps), 0.1, 10)    (improvement over time)
      tp = exp(-lambda_time * max(0, #{k: e_k > tau_h} - patience))               (hard too long)
      ep = exp(-lambda_easy * max(0, #{k: e_k < tau_e} - easy_patience))          (easy too long)
      w = max(d**alpha * t**beta * tp**gamma * ep, eps),  p = w / sum(w)
    """
    e0 = _entropy_array(entropy_0, "entropy_0")
    e1 = _entropy_array(entropy_1, "entropy_1")
    e2 = _entropy_array(entropy_2, "entropy_2")
    _same_length(entropy_0=e0, entropy_1=e1, entropy_2=e2)
    a, b, c = (_coefficient(v, n) for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")))
    lt = _coefficient(lambda_time, "lambda_time")
    le = _coefficient(lambda_easy, "lambda_easy")
    if not 0.0 <= easy_quantile < hard_quantile <= 1.0:
        raise ValueError(
            f"easy_quantile/hard_quantile: need 0 <= easy_quantile < hard_quantile <= 1, "
            f"got {easy_quantile} and {hard_quantile}"
        )
    for name, v in (("patience", patience), ("easy_patience", easy_patience)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")

    tau_e = np.quantile(e2, easy_quantile)
    tau_h = np.quantile(e2, hard_quantile)
    difficulty = np.clip((e2 - tau_e) / (tau_h - tau_e + _EPS), 0.0, 1.0) + _EPS
    improvement = e0 - e2
    trend = np.clip(1.0 + 0.5 * improvement / (improvement.std() + _EPS), 0.1, 10.0)  # np.std: ddof=0
    n_hard = (e0 > tau_h).astype(np.int64) + (e1 > tau_h) + (e2 > tau_h)
    n_easy = (e0 < tau_e).astype(np.int64) + (e1 < tau_e) + (e2 < tau_e)
    k_hard = np.maximum(0, n_hard - patience)
    k_easy = np.maximum(0, n_easy - easy_patience)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        time_penalty = np.exp(-lt * k_hard)
        easy_penalty = np.exp(-le * k_easy)
        w = np.maximum(difficulty**a * trend**b * time_penalty**c * easy_penalty, _EPS)
        if not np.isfinite(w.sum()):  # huge exponents overflowed: the same weights, computed from their logs
            w = _brownboost_from_logs(
                [a * np.log(difficulty), b * np.log(trend), _times(c, -_times(lt, k_hard)), -_times(le, k_easy)]
            )
    return _normalise(w)


def _times(x: float, k: np.ndarray) -> np.ndarray:
    """x * k, 0 where k == 0 (whatever x), at most 1e300 in magnitude (so that sums of a few stay finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(k == 0, 0.0, np.clip(x * k, -1e300, 1e300))


def _brownboost_from_logs(log_terms: list[np.ndarray]) -> np.ndarray:
    """max(prod_i exp(log_terms[i]), _EPS) up to a common factor, without overflow: shifted by the largest log."""
    log_w = sum(np.clip(t, -1e300, 1e300) for t in log_terms)
    top = log_w.max()
    floor = np.exp(min(np.log(_EPS) - top, 0.0))  # _EPS / exp(top), capped at 1 (then every weight is the floor)
    return np.maximum(np.exp(log_w - top), floor)


@dataclass(frozen=True)
class Resampled:
    """The outcome of `resample`: the selected ids (in draw order) and what the draw looked like."""

    ids: np.ndarray
    n_drawn: int  # draws made (with replacement)
    n_unique: int  # distinct ids among the draws
    n_duplicates: int  # n_drawn - n_unique: repeated draws (dropped when dedup=True)
    dedup: bool

    def summary(self) -> str:
        kept = "kept" if not self.dedup else "removed"
        return (
            f"drew {self.n_drawn} samples with replacement: {self.n_unique} unique, "
            f"{self.n_duplicates} duplicates ({kept}); training set = {self.ids.size}"
        )


def resample(ids, p, size: int, seed: int, dedup: bool = False) -> Resampled:
    """Draw `size` ids with replacement by probability `p` (seeded); with `dedup`, keep each id once.

    Draw order is preserved (first occurrence when deduplicating). Same inputs and seed give the same ids.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"ids: expected a non-empty 1-D array, got shape {ids.shape}")
    p = np.asarray(p, dtype=np.float64)
    if p.shape != ids.shape:
        raise ValueError(f"p: expected one probability per id ({ids.size}), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not p.sum() > 0:
        raise ValueError("p: probabilities must be finite, >= 0 and not all zero")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size: must be an integer >= 1, got {size!r}")
    rng = np.random.default_rng(seed)
    positions = rng.choice(ids.size, size=int(size), replace=True, p=p / p.sum())
    _, first = np.unique(positions, return_index=True)
    n_unique = int(first.size)
    if dedup:
        positions = positions[np.sort(first)]
    return Resampled(
        ids=ids[positions],
        n_drawn=int(size),
        n_unique=n_unique,
        n_duplicates=int(size) - n_unique,
        dedup=dedup,
    )
