"""Seeds needed for an effect: the inverse of the paired-t minimum detectable effect."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.core.stats import mde_paired
from bench.power import power_table, seeds_needed


def test_seeds_needed_inverts_the_mde():
    for n in (3, 5, 10, 40):
        assert seeds_needed(0.1, mde_paired(0.1, n)) == n
    assert seeds_needed(0.1, 1e-6) == math.inf
    assert math.isnan(seeds_needed(0.0, 0.01))  # no observed spread: nothing to plan with


def test_mde_is_exact_at_two_seeds_and_at_holm_levels():
    """scipy's nct.cdf is NaN for some (n, nc): read as power 1, it put the MDE at 2 seeds at 5.39 (true
    11.55, the statsmodels value) and made it shrink as α shrinks. A simulated paired t-test at the MDE must
    have 80 % power."""
    from scipy import stats

    assert mde_paired(1.0, 2) == pytest.approx(11.5499, rel=1e-4)
    assert mde_paired(1.0, 3, alpha=0.05 / 9) == pytest.approx(9.8234, rel=1e-4)
    rng = np.random.default_rng(0)
    for n, alpha in ((2, 0.05), (3, 0.05 / 9), (6, 0.01)):
        d = mde_paired(1.0, n, alpha=alpha)
        x = rng.normal(d, 1.0, (100_000, n))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        assert (np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1)).mean() == pytest.approx(0.8, abs=0.01), (n, alpha)
    for n in (2, 3, 4, 6, 10):
        levels = [mde_paired(1.0, n, alpha=a) for a in (0.05, 0.025, 0.01, 0.005, 0.001)]
        assert levels == sorted(levels), n  # a stricter α needs a larger effect
    assert math.isnan(mde_paired(0.0, 5)) and math.isnan(mde_paired(1.0, 1))


def test_power_table_pairs_methods_by_seed():
    rng = np.random.default_rng(0)
    rows = [
        {
            "model": "m",
            "task": "toxicity",
            "method": meth,
            "seed": s,
            "align_score": 0.5 + (0.05 if meth == "decpo" else 0) + rng.normal(0, 0.01),
        }
        for s in range(6)
        for meth in ("base", "dpo", "decpo")
    ]
    t = power_table(pd.DataFrame(rows), effect=0.02).set_index(["comparison", "metric"])
    r = t.loc[("decpo − dpo", "align_score")]
    assert r["n_seeds"] == 6 and r["diff"] == pytest.approx(0.05, abs=0.02)
    assert r["seeds_needed"] == seeds_needed(r["sd"], 0.02)
    assert ("dpo − base", "align_score") in t.index
