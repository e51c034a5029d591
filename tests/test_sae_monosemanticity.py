"""MonoSemanticity Score (saes.monosemanticity): the SPEC §5 formula and the exact per-latent test."""

import math

import numpy as np
import pytest
import torch

from saes.monosemanticity import distinct_first, distinct_subsets, interpretable, monosemanticity_scores


def _unit(n, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def test_ms_matches_pairwise_definition():
    emb = _unit(60, seed=3)
    z = torch.rand(60, 3) * (torch.rand(60, 3) > 0.5)
    ms, _, _ = monosemanticity_scores(z, emb, top_n=8, null_draws=19)
    for i in range(3):
        vals, idx = z[:, i].topk(8)
        a = (vals - z[:, i].min()) / (z[:, i].max() - z[:, i].min())
        s = emb[idx] @ emb[idx].T
        iu = torch.triu_indices(8, 8, 1)
        w = a[iu[0]] * a[iu[1]]
        assert float(ms[i]) == pytest.approx(float((w * s[iu[0], iu[1]]).sum() / w.sum()), abs=1e-5)


def test_latent_on_one_concept_is_interpretable_at_the_smallest_p():
    emb = _unit(400)
    topic = torch.arange(0, 400, 10)  # 40 contexts close to one direction
    emb[topic] = torch.nn.functional.normalize(emb[0] + 0.3 * _unit(40, seed=5), dim=1)
    g = torch.Generator().manual_seed(1)
    z = torch.zeros(400, 2)
    z[topic, 0] = 1.0 + torch.rand(40, generator=g)
    z[:, 1] = torch.rand(400, generator=g)  # fires everywhere, at random
    ms, p, q95 = monosemanticity_scores(z, emb, top_n=32, null_draws=99, seed=0)
    assert ms[0] > q95[0] and p[0] == pytest.approx(1 / 100)
    assert p[1] > 0.05 and interpretable(p).tolist() == [True, False]


def test_latent_active_on_one_context_has_undefined_ms_and_p_one():
    z = torch.zeros(30, 1)
    z[3, 0] = 1.0
    ms, p, _ = monosemanticity_scores(z, _unit(30), top_n=8, null_draws=19)
    assert math.isnan(float(ms[0])) and float(p[0]) == 1.0


def test_random_latents_are_flagged_at_the_nominal_rate():
    g = torch.Generator().manual_seed(7)
    z = torch.rand(600, 300, generator=g) * (torch.rand(600, 300, generator=g) < 0.1)
    emb = torch.nn.functional.normalize(_unit(600, seed=8) + 0.5 * _unit(1, seed=9), dim=1)  # correlated contexts
    _, p, _ = monosemanticity_scores(z, emb, top_n=32, null_draws=99, seed=1)
    assert float(interpretable(p).float().mean()) <= 0.08


def test_distinct_first_and_subsets():
    assert distinct_first(["a", "b", "a", "c", "b"]).tolist() == [0, 1, 3]
    g = torch.Generator().manual_seed(0)
    for pool, n in ((1000, 32), (40, 32)):  # rejection path and permutation path
        s = distinct_subsets(g, 5000, n, pool)
        assert s.shape == (5000, n) and all(len(set(r)) == n for r in s.tolist())
        counts = np.bincount(s.flatten().numpy(), minlength=pool)
        assert counts.min() > 0.6 * counts.mean()  # every context is drawn about equally
    with pytest.raises(ValueError, match="distinct"):
        distinct_subsets(g, 1, 5, 4)
