"""SAE scores of SPEC.md §5 as pure functions over tensors (no model, no I/O).

Notation: x ∈ R^{N×d_in} held-out activations, x̂ the SAE reconstruction, z ∈ R^{N×d_sae} latent
activations, p_i = density of latent i = share of tokens with z_ti ≠ 0. "Alive" = p_i > 0.
Every fraction over alive latents is 0.0 when no latent is alive (the caller reports n_alive = 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from beartype import beartype
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from saes.activations import check_finite


@jaxtyped(typechecker=beartype)
def sae_mse(x: Float[Tensor, "tok d_in"], x_hat: Float[Tensor, "tok d_in"]) -> float:
    """mean_t ‖x_t − x̂_t‖² (summed over dims, averaged over tokens — SAELens's ``mse``)."""
    check_finite(x, "SAE input")
    check_finite(x_hat, "SAE reconstruction")
    return float((x.double() - x_hat.double()).pow(2).sum(-1).mean())


@jaxtyped(typechecker=beartype)
def sae_explained_variance(x: Float[Tensor, "tok d_in"], x_hat: Float[Tensor, "tok d_in"]) -> float:
    """1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖², pooled over tokens (x̄ = mean over tokens).

    Equals SAELens's ``explained_variance`` (``ExplainedVarianceCalculator``), not its per-token
    ``explained_variance_legacy``. Zero total variance gives 1.0 if the residual is also zero, else 0.0.
    """
    check_finite(x, "SAE input")
    check_finite(x_hat, "SAE reconstruction")
    xd = x.double()
    resid = (xd - x_hat.double()).pow(2).sum()
    total = (xd - xd.mean(0)).pow(2).sum()
    if total < 1e-12:
        return 1.0 if resid < 1e-12 else 0.0
    return float(1.0 - resid / total)


@jaxtyped(typechecker=beartype)
def feature_density(z: Float[Tensor, "tok d_sae"]) -> Float[Tensor, "d_sae"]:
    """p_i = (1/N) Σ_t 1[z_ti ≠ 0]."""
    check_finite(z, "SAE latents")
    return (z != 0).double().mean(0)


@jaxtyped(typechecker=beartype)
def sae_l0(density: Float[Tensor, "d_sae"]) -> float:
    """Mean active latents per token: (1/N) Σ_t Σ_i 1[z_ti ≠ 0] = Σ_i p_i."""
    return float(density.sum())


@jaxtyped(typechecker=beartype)
def sae_dead_frac(density: Float[Tensor, "d_sae"]) -> float:
    """Share of latents never active on the held-out tokens (p_i = 0)."""
    return float((density == 0).double().mean())


@jaxtyped(typechecker=beartype)
def sae_dense_frac(density: Float[Tensor, "d_sae"], threshold: float = 0.1) -> float:
    """Share of latents active on more than ``threshold`` of held-out tokens (p_i > threshold)."""
    return float((density > threshold).double().mean())


@jaxtyped(typechecker=beartype)
def max_abs_correlation(z: Float[Tensor, "tok lat"], block: int = 1024) -> Float[Tensor, "lat"]:
    """c_i = max_{j≠i} |ρ_ij|, ρ the Pearson correlation of latents over tokens.

    Computed blockwise as Ẑ_bᵀ Ẑ / N with Ẑ the standardised latents. A latent with zero variance
    over the tokens has no defined correlation; its ρ with every latent is taken as 0 (so c_i = 0).
    Fewer than two latents or tokens give c = 0.
    """
    check_finite(z, "SAE latents")
    n, n_lat = z.shape
    out = torch.zeros(n_lat, dtype=torch.float64)
    if n < 2 or n_lat < 2:
        return out
    zc = z.float() - z.float().mean(0)
    std = zc.pow(2).mean(0).sqrt()
    ok = std > 1e-8 * std.max().clamp_min(1e-30)
    zs = torch.where(ok, zc / std.clamp_min(1e-30), torch.zeros_like(zc))
    for start in range(0, n_lat, block):
        corr = zs[:, start:start + block].T @ zs / n                      # (b, lat)
        rows = torch.arange(corr.shape[0])
        corr[rows, rows + start] = 0.0
        out[start:start + block] = corr.abs().amax(1).double()
    return out.clamp_(max=1.0)


@jaxtyped(typechecker=beartype)
def sae_frac_decorrelated(max_abs_corr: Float[Tensor, "alive"], threshold: float = 0.3) -> float:
    """Share of alive latents with max_{j≠i} |ρ_ij| < ``threshold`` (0.0 when none is alive)."""
    return float((max_abs_corr < threshold).double().mean()) if max_abs_corr.numel() else 0.0


def _ms_from_weights(a: Tensor, emb_sum: Tensor) -> Tensor:
    """MS from a (…, n) and v = Σ_n a_n e_n (…, D) with unit e_n: ‖v‖² = Σ a_n² + 2 Σ_{n<m} a_n a_m s_nm,
    (Σ a_n)² = Σ a_n² + 2 Σ_{n<m} a_n a_m, so MS = (‖v‖² − Σ a²) / ((Σ a)² − Σ a²)."""
    a2 = a.pow(2).sum(-1)
    num = emb_sum.pow(2).sum(-1) - a2
    den = a.sum(-1).pow(2) - a2
    return torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.full_like(num, math.nan))


@jaxtyped(typechecker=beartype)
def monosemanticity_scores(z: Float[Tensor, "tok lat"], emb: Float[Tensor, "tok emb_dim"], *, top_n: int = 32,
                           null_draws: int = 50, percentile: float = 95.0, seed: int = 0,
                           block: int = 512) -> tuple[Float[Tensor, "lat"], Float[Tensor, "lat"]]:
    """MonoSemanticity Score of each latent and the ``percentile`` of its permutation null.

    Pach et al. 2025, adapted to text (SPEC.md §5): for latent i take its top-n tokens; a_n = the
    activation min-max normalised over *all* tokens, (z − min_t z)/(max_t z − min_t z) (for ReLU-type
    latents a_n = z_n / max_t z); s_nm = cosine similarity of the n-th and m-th context embeddings;
    MS_i = Σ_{n<m} a_n a_m s_nm / Σ_{n<m} a_n a_m. Null: the same a_n over ``null_draws`` sets of n
    contexts drawn uniformly without replacement from all tokens (seeded; the draws are shared by
    all latents). MS is NaN when fewer than two of the top-n tokens have a_n > 0.
    Cost: O(lat · (n + draws) · n · emb_dim) as matrix products; each context is embedded once.
    """
    check_finite(z, "SAE latents")
    check_finite(emb, "context embeddings")
    n_tok, n_lat = z.shape
    n = min(top_n, n_tok)
    vals, idx = z.float().topk(n, dim=0)                                    # (n, lat)
    lo, hi = z.float().amin(0), z.float().amax(0)
    a = ((vals - lo) / (hi - lo).clamp_min(1e-12)).clamp_(0.0, 1.0).T      # (lat, n)
    e = emb.float() / emb.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)   # s_nm = cosine
    gen = torch.Generator().manual_seed(seed)
    draws = torch.stack([torch.randperm(n_tok, generator=gen)[:n] for _ in range(null_draws)])  # (R, n)
    e_null = e[draws]                                                       # (R, n, D)
    ms = torch.empty(n_lat)
    p_null = torch.empty(n_lat)
    for s in range(0, n_lat, block):
        a_b = a[s:s + block]                                                # (b, n)
        idx_b = idx[:, s:s + block].T                                       # (b, n)
        v = torch.einsum("bn,bnd->bd", a_b, e[idx_b])
        ms[s:s + block] = _ms_from_weights(a_b, v)
        v_null = torch.einsum("bn,rnd->brd", a_b, e_null)                   # (b, R, D)
        null = _ms_from_weights(a_b[:, None, :].expand(-1, null_draws, -1), v_null)
        p_null[s:s + block] = torch.quantile(null, percentile / 100.0, dim=1)
    return ms, p_null


@jaxtyped(typechecker=beartype)
def interpretable_mask(ms: Float[Tensor, "lat"], null_p: Float[Tensor, "lat"]) -> Bool[Tensor, "lat"]:
    """MS_i > null percentile (NaN scores are not interpretable)."""
    return torch.nan_to_num(ms, nan=-math.inf) > torch.nan_to_num(null_p, nan=math.inf)


@jaxtyped(typechecker=beartype)
def sae_frac_interpretable(ms: Float[Tensor, "alive"], null_p: Float[Tensor, "alive"]) -> float:
    """Share of alive latents whose MS exceeds the percentile of its null (0.0 when none is alive)."""
    return float(interpretable_mask(ms, null_p).double().mean()) if ms.numel() else 0.0


@jaxtyped(typechecker=beartype)
def sae_frac_interp_decor(ms: Float[Tensor, "alive"], null_p: Float[Tensor, "alive"],
                          max_abs_corr: Float[Tensor, "alive"], threshold: float = 0.3) -> float:
    """Share of alive latents that are both interpretable and decorrelated (0.0 when none is alive)."""
    if not ms.numel():
        return 0.0
    return float((interpretable_mask(ms, null_p) & (max_abs_corr < threshold)).double().mean())


def sae_ce_score(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    """(CE_zero-abl − CE_sae) / (CE_zero-abl − CE_clean): 1 = SAE loses nothing, 0 = as bad as zeroing.

    NaN when zero-ablation does not change the loss (the score is then undefined).
    """
    for name, v in (("ce_clean", ce_clean), ("ce_sae", ce_sae), ("ce_zero", ce_zero)):
        if not math.isfinite(v):
            raise ValueError(f"{name} = {v} is not finite; the spliced forward produced NaN/inf")
    gap = ce_zero - ce_clean
    return (ce_zero - ce_sae) / gap if abs(gap) > 1e-9 else math.nan


@jaxtyped(typechecker=beartype)
def k_sparse_probe_accuracy(features: Float[Tensor, "text d_sae"], labels: Int[Tensor, "text"], k: int,
                            train_idx: Int[Tensor, "n_train"], test_idx: Int[Tensor, "n_test"]) -> float:
    """SAEBench k-sparse probing: top-k latents by |mean_pos − mean_neg| on the train split, then an
    L2 logistic regression (C = 1, max_iter = 1000, as SAEBench) on those k; accuracy on the test split."""
    from sklearn.linear_model import LogisticRegression

    check_finite(features, "pooled probe features")
    f = features.double().numpy()
    y = labels.numpy()
    tr, te = train_idx.numpy(), test_idx.numpy()
    if len(np.unique(y[tr])) < 2:
        raise ValueError("the probe's train split has a single class; give concept texts of both labels")
    diff = np.abs(f[tr][y[tr] == 1].mean(0) - f[tr][y[tr] == 0].mean(0))
    top = np.argsort(-diff, kind="stable")[:k]
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(f[tr][:, top], y[tr])
    return float((clf.predict(f[te][:, top]) == y[te]).mean())
