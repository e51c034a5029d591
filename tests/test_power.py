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
    assert seeds_needed(0.0, 0.01) == 2


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
