"""Latent decorrelation (saes.correlation): the max |ρ| formula, the permutation test and its chance level."""

import numpy as np
import pytest
import torch

from saes.correlation import correlated_mask, decorrelation, max_abs_correlation, permute_columns


def _sparse(rng, t, n, density):
    return torch.from_numpy(rng.exponential(1.0, (t, n)) * (rng.random((t, n)) < density))


def test_max_abs_correlation_matches_numpy_corrcoef():
    rng = np.random.default_rng(0)
    z = _sparse(rng, 300, 12, 0.3)
    c, partner = max_abs_correlation(z, block=5)  # blocks smaller than the width
    r = np.corrcoef(z.numpy().T)
    np.fill_diagonal(r, 0)
    assert c.numpy() == pytest.approx(np.abs(r).max(1), abs=1e-9)
    assert partner.tolist() == np.abs(r).argmax(1).tolist()


def test_identical_and_constant_latents():
    rng = np.random.default_rng(1)
    z = _sparse(rng, 500, 4, 0.2)
    z[:, 1] = z[:, 0]
    z[:, 3] = 2.0  # constant: correlation undefined → 0
    c, partner = max_abs_correlation(z)
    assert c[0] == pytest.approx(1.0) and partner[0] == 1 and partner[1] == 0
    assert c[3] == 0.0 and partner[3] == -1


def test_copies_are_correlated_and_independent_latents_are_not():
    rng = np.random.default_rng(2)
    z = _sparse(rng, 3000, 30, 0.03)
    z[:, 29] = z[:, 0]
    c, _ = max_abs_correlation(z)
    corr, p = correlated_mask(z, c, draws=99, seed=0)
    assert corr[0] and corr[29] and p[0] == pytest.approx(1 / 100)
    assert corr[1:29].sum() <= 2
    assert ((c < 0.3) <= (p == 1.0)).all()  # below the threshold: not tested, p = 1


def test_coincidence_of_single_tokens_is_not_evidence():
    """Latents active on one token each (one per row): latents 0 and 1 share row 0, so |ρ| = 1, but moving
    latent 0's token almost anywhere meets another latent's token and gives |ρ| = 1 too: not significant."""
    z = torch.zeros(120, 100, dtype=torch.float64)
    z[0, 0] = z[0, 1] = 1.0
    for j in range(2, 100):
        z[j, j] = 1.0
    c, _ = max_abs_correlation(z)
    assert c[0] == pytest.approx(1.0)
    corr, p = correlated_mask(z, c, draws=99, seed=0)
    assert not corr[0] and p[0] > 0.5


def test_permute_columns_keeps_every_column_and_breaks_pairs():
    rng = np.random.default_rng(3)
    z = _sparse(rng, 1000, 5, 0.1)
    z[:, 1] = z[:, 0]
    zp = permute_columns(z, seed=0)
    for j in range(5):
        assert sorted(zp[:, j].tolist()) == sorted(z[:, j].tolist())
    assert max_abs_correlation(zp)[0][0] < 0.3


@pytest.mark.parametrize("t", [400, 3000])
def test_chance_level_does_not_depend_on_the_token_count(t):
    """Independent latents: the thresholded max |ρ| alone flags many at few tokens; the test flags ≤ α."""
    rng = np.random.default_rng(t)
    z = _sparse(rng, t, 150, 1.0) * torch.from_numpy(rng.random((t, 150)) < np.linspace(0.005, 0.05, 150))
    out = decorrelation(z, seed=0)
    assert out["frac_decorrelated"] >= 0.92 and out["null"] >= 0.92
    if t == 400:
        assert float((out["max_abs_corr"] >= 0.3).double().mean()) > 0.15  # what the old threshold rule counted
