"""SAE scores as pure functions, on constructed latents (no model)."""

import math

import pytest
import torch

from bench.core.errors import NonFiniteActivationsError
from saes import metrics as M
from saes.correlation import max_abs_correlation
from saes.monosemanticity import monosemanticity_scores


def test_reconstruction_metrics_match_formulas():
    x = torch.randn(200, 8)
    x_hat = x + 0.1 * torch.randn(200, 8)
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    assert M.sae_mse(x, x_hat) == pytest.approx(float(resid / 200), rel=1e-5)
    assert M.sae_explained_variance(x, x_hat) == pytest.approx(float(1 - resid / total), rel=1e-5)
    assert M.sae_explained_variance(x, x) == 1.0
    assert M.sae_explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-6)


def test_density_l0_dead_dense():
    z = torch.zeros(10, 4)
    z[:, 0] = 1.0  # active on every token (dense)
    z[0, 1] = 2.0  # active on 1 of 10 tokens (density 0.1: not dense, threshold is strict)
    z[:5, 2] = 0.5  # half the tokens
    density = M.feature_density(z)
    assert density.tolist() == pytest.approx([1.0, 0.1, 0.5, 0.0])
    assert M.sae_l0(density) == pytest.approx(1.6)
    assert M.sae_dead_frac(density) == 0.25
    assert M.sae_dense_frac(density, 0.1) == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_raise(bad):
    x = torch.randn(10, 4)
    x[2, 1] = bad
    with pytest.raises(NonFiniteActivationsError, match="NaN/inf"):
        M.sae_explained_variance(x, torch.zeros(10, 4))
    with pytest.raises(NonFiniteActivationsError):
        M.feature_density(x)
    with pytest.raises(NonFiniteActivationsError):
        max_abs_correlation(x)
    with pytest.raises(NonFiniteActivationsError):
        monosemanticity_scores(x, torch.nn.functional.normalize(torch.randn(10, 4), dim=1), top_n=4, null_draws=19)


def test_ce_score():
    assert M.sae_ce_score(2.0, 2.0, 5.0) == 1.0
    assert M.sae_ce_score(2.0, 5.0, 5.0) == 0.0
    assert M.sae_ce_score(2.0, 3.5, 5.0) == pytest.approx(0.5)
    assert math.isnan(M.sae_ce_score(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="not finite"):
        M.sae_ce_score(2.0, math.nan, 5.0)


def test_k_sparse_probe_finds_the_informative_latent():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(80) % 2
    feats = torch.rand(80, 50, generator=g)
    feats[:, 17] += 3.0 * labels  # only latent 17 carries the label
    tr, te = torch.arange(0, 56), torch.arange(56, 80)
    assert M.k_sparse_probe_accuracy(feats, labels, 1, tr, te) == 1.0
    assert M.k_sparse_probe_accuracy(feats, labels, 5, tr, te) == 1.0
