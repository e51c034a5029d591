"""SAE scores as pure functions, on constructed latents (no model)."""

import math

import pytest
import torch

from saes import metrics as M
from saes.activations import NonFiniteActivationsError


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
    z[:, 0] = 1.0          # active on every token (dense)
    z[0, 1] = 2.0          # active on 1 of 10 tokens (density 0.1: not dense, threshold is strict)
    z[:5, 2] = 0.5         # half the tokens
    density = M.feature_density(z)
    assert density.tolist() == pytest.approx([1.0, 0.1, 0.5, 0.0])
    assert M.sae_l0(density) == pytest.approx(1.6)
    assert M.sae_dead_frac(density) == 0.25
    assert M.sae_dense_frac(density, 0.1) == 0.5


def test_identical_latents_are_not_decorrelated():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(500, 1, generator=g).relu()
    z = torch.cat([base, base, torch.rand(500, 3, generator=g)], dim=1)
    corr = M.max_abs_correlation(z, block=2)                       # blocks smaller than the width
    assert corr[0] == pytest.approx(1.0, abs=1e-5) and corr[1] == pytest.approx(1.0, abs=1e-5)
    assert (corr[2:] < 0.3).all()
    assert M.sae_frac_decorrelated(corr, 0.3) == pytest.approx(3 / 5)


def test_zero_variance_latent_has_zero_correlation():
    z = torch.rand(50, 3)
    z[:, 1] = 2.0                                                 # constant: correlation undefined → 0
    corr = M.max_abs_correlation(z)
    assert corr[1] == 0.0 and torch.isfinite(corr).all()


def _contexts(n_tok: int, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_tok, dim, generator=g)
    return emb / emb.norm(dim=1, keepdim=True)


def test_latent_on_one_repeated_context_is_interpretable():
    n_tok = 400
    emb = _contexts(n_tok)
    same = torch.arange(0, n_tok, 10)                             # 40 tokens sharing one context
    emb[same] = emb[0].clone()
    g = torch.Generator().manual_seed(1)
    z = torch.zeros(n_tok, 2)
    z[same, 0] = 1.0 + torch.rand(len(same), generator=g)         # fires only on that context
    z[:, 1] = torch.rand(n_tok, generator=g)                      # fires everywhere, at random
    ms, null = M.monosemanticity_scores(z, emb, top_n=32, null_draws=40, seed=0)
    assert ms[0] == pytest.approx(1.0, abs=1e-5)
    assert ms[0] > null[0]
    assert ms[1] < 0.5
    assert M.sae_frac_interpretable(ms, null) == pytest.approx(0.5)


def test_ms_matches_pairwise_definition():
    n_tok = 60
    emb = _contexts(n_tok, seed=3)
    z = torch.rand(n_tok, 3) * (torch.rand(n_tok, 3) > 0.5)
    ms, _ = M.monosemanticity_scores(z, emb, top_n=8, null_draws=5)
    for i in range(3):
        vals, idx = z[:, i].topk(8)
        a = (vals - z[:, i].min()) / (z[:, i].max() - z[:, i].min())
        s = emb[idx] @ emb[idx].T
        iu = torch.triu_indices(8, 8, 1)
        w = a[iu[0]] * a[iu[1]]
        assert float(ms[i]) == pytest.approx(float((w * s[iu[0], iu[1]]).sum() / w.sum()), abs=1e-5)


def test_latent_active_on_one_token_has_undefined_ms():
    z = torch.zeros(30, 1)
    z[3, 0] = 1.0
    ms, null = M.monosemanticity_scores(z, _contexts(30), top_n=8, null_draws=5)
    assert math.isnan(float(ms[0]))
    assert M.sae_frac_interpretable(ms, null) == 0.0


def test_all_dead_fractions_are_zero_not_nan():
    z = torch.zeros(20, 6)
    density = M.feature_density(z)
    alive = density > 0
    corr = M.max_abs_correlation(z[:, alive])
    ms, null = M.monosemanticity_scores(z[:, alive], _contexts(20), top_n=4, null_draws=3)
    assert corr.numel() == 0 and ms.numel() == 0
    values = [M.sae_dead_frac(density), M.sae_dense_frac(density), M.sae_l0(density),
              M.sae_frac_decorrelated(corr), M.sae_frac_interpretable(ms, null),
              M.sae_frac_interp_decor(ms, null, corr)]
    assert values == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_raise(bad):
    x = torch.randn(10, 4)
    x[2, 1] = bad
    with pytest.raises(NonFiniteActivationsError, match="NaN/inf"):
        M.sae_explained_variance(x, torch.zeros(10, 4))
    with pytest.raises(NonFiniteActivationsError):
        M.feature_density(x)
    with pytest.raises(NonFiniteActivationsError):
        M.max_abs_correlation(x)
    with pytest.raises(NonFiniteActivationsError):
        M.monosemanticity_scores(x, _contexts(10), top_n=4, null_draws=2)


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
    feats[:, 17] += 3.0 * labels                                  # only latent 17 carries the label
    tr, te = torch.arange(0, 56), torch.arange(56, 80)
    assert M.k_sparse_probe_accuracy(feats, labels, 1, tr, te) == 1.0
    assert M.k_sparse_probe_accuracy(feats, labels, 5, tr, te) == 1.0
