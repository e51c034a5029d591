"""Statistics every table and figure uses: t intervals, paired differences, Holm, minimum detectable effects.

- ``t_half_width(v)`` = t_{0.975, n−1} · s / √n (95 % t confidence half-width of a mean; NaN for n < 2).
- ``paired_test(d)``: the paired t-test of differences d_s (one per seed): mean d̄, half-width, two-sided p.
- ``holm(p)``: Holm–Bonferroni adjusted p-values (step-down; monotone; controls the family-wise error).
- ``mde_paired(sd, n)``: the smallest true mean difference a paired t-test on n seeds with per-seed spread
  ``sd`` detects with probability ``power`` at level ``alpha`` (noncentral t, exact).

Example::

    python -c "from bench.core.stats import holm; print(holm([0.01, 0.04, 0.03]))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def t_half_width(values: Sequence[float] | np.ndarray, level: float = 0.95) -> float:
    """t_{(1+level)/2, n−1} · s / √n over the finite values; NaN with fewer than two."""
    from scipy import stats

    v = finite(values)
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % t interval of the mean, m ± ``t_half_width``; (m, m) with one value, (NaN, NaN) with none."""
    v = finite(values)
    if len(v) == 0:
        return math.nan, math.nan
    m, h = float(v.mean()), t_half_width(v)
    return (m, m) if math.isnan(h) else (m - h, m + h)


NO_SPREAD = 1e-12
"""Differences whose sd is at most this times max(1, |mean|) count as all equal (no spread); a mean of at most
this counts as 0."""


class PairedTest(TypedDict):
    n: int
    mean: float
    sd: float
    half: float
    p: float


def paired_test(d: Sequence[float]) -> PairedTest:
    """n, mean, sd, 95 % half-width and two-sided p of the one-sample t-test of d = 0.

    All-equal differences (sd = 0, up to float rounding: ``NO_SPREAD``) have no spread to test against: p is
    NaN ("not testable", never "beyond noise") when their mean is not 0, and 1 when it is 0 (e.g. a
    ``pref_acc`` of 1.0 for both methods, or differences of 1e-17 left by rounding).
    """
    from scipy import stats

    v = finite(d)
    n = len(v)
    if n < 2:
        return {"n": n, "mean": float(v.mean()) if n else math.nan, "sd": math.nan, "half": math.nan, "p": math.nan}
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    if sd <= NO_SPREAD * max(1.0, abs(mean)):  # equal up to float rounding (1 − x of equal x's can differ by 1e-17)
        p = 1.0 if abs(mean) <= NO_SPREAD else math.nan  # all 0 (up to rounding): no difference at all
        return {"n": n, "mean": mean, "sd": 0.0, "half": 0.0, "p": p}
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return {"n": n, "mean": mean, "sd": sd, "half": t_half_width(v), "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: sort ascending, p̃_(k) = max_{j≤k} min(1, (m − j + 1) p_(j)); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), math.nan)
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mde_paired(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |δ| that a two-sided paired t-test on ``n`` differences with spread ``sd`` detects with
    probability ``power`` at level ``alpha``: solves P(|T| > t_{1−α/2, n−1}; noncentrality δ√n/sd) = power.

    NaN for n < 2 and for sd = 0 (no observed spread: the power of a test against it cannot be estimated).
    The lower tail is P(T < −c; nc) = P(T > c; −nc): scipy's ``nct.cdf`` returns NaN there for some
    (n, nc), which once made the root land far too low."""
    from scipy import optimize, stats

    if n < 2 or not math.isfinite(sd) or sd == 0:
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, n - 1)

    def achieved(nc: float) -> float:
        p = stats.nct.sf(crit, n - 1, nc) + stats.nct.sf(crit, n - 1, -nc)
        if not math.isfinite(p):
            raise FloatingPointError(f"noncentral t power is {p} at n={n}, nc={nc}, alpha={alpha}")
        return p - power

    hi = 1.0
    while achieved(hi) < 0:  # the power grows with the noncentrality; bracket the root
        hi *= 2
    nc = optimize.brentq(achieved, 0.0, hi)
    return float(nc * sd / math.sqrt(n))
