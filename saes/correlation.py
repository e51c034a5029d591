"""Latent decorrelation (SPEC.md §5), with a chance correction that does not depend on the token count.

Notation: z ∈ R^{T×L} latent activations of L alive latents on T held-out tokens; ρ_ij the Pearson
correlation of latents i and j over the tokens; c_i = max_{j≠i} |ρ_ij| and j*(i) its argmax (the
partner). A latent with zero variance over the tokens correlates with nothing (ρ = 0).

A latent is **correlated** when c_i ≥ τ (``threshold``, 0.3) *and* c_i is larger than latent i would
show if it were independent of every other latent: a permutation test shuffles z_i over the T tokens
(R draws, the other latents fixed), p_i = (1 + #{c_i^π ≥ c_i}) / (R + 1), and correlated ⇔ c_i ≥ τ ∧
p_i ≤ α. ``frac_decorrelated`` = share of alive latents that are not correlated. Under independence
P(correlated) ≤ α whatever T and the densities (a permutation test is exact), so the chance level is
≥ 1 − α for every store; with few tokens, sparse latents reach |ρ| ≥ 0.3 by chance (the old
threshold-only share was 0.45–0.99 for independent latents depending on T), and the test removes those.
``decorrelation_null`` reports the same share for the same latents each permuted independently over
the tokens (same densities, no dependence): the chance level, printed beside the metric.

Everything runs on a sparse copy of z (top-k latents are ~1 % dense): the Gram matrix costs
Σ_t nnz_t² and one permutation of latent i costs nnz_i · L0 instead of T · L.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from bench.core.controls import control
from bench.core.errors import check_finite


def _moments(zs: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population sd) of every column of a sparse (T, L) matrix, float64."""
    t = zs.shape[0]
    mu = np.asarray(zs.sum(0)).ravel() / t
    sq = np.asarray(zs.multiply(zs).sum(0)).ravel() / t
    return mu, np.sqrt(np.maximum(sq - mu**2, 0.0))


def _ok(sd: np.ndarray) -> np.ndarray:
    return sd > 1e-8 * max(float(sd.max(initial=0.0)), 1e-30)


def max_abs_correlation(z: Tensor, block: int = 1024) -> tuple[Tensor, Tensor]:
    """(c, partner): c_i = max_{j≠i} |ρ_ij| (float64) and the j reaching it (int64; −1 when c_i = 0).

    ρ = (Zᵀ Z − T μ μᵀ) / (T σ σᵀ), computed from a sparse Z in row blocks of ``block`` latents.
    Fewer than two latents or tokens give c = 0.
    """
    check_finite(z, "SAE latents")
    t, n = z.shape
    c, partner = torch.zeros(n, dtype=torch.float64), torch.full((n,), -1, dtype=torch.int64)
    if t < 2 or n < 2:
        return c, partner
    zs = sp.csr_matrix(z.double().numpy())
    mu, sd = _moments(zs)
    ok = _ok(sd)
    zc = zs.tocsc()
    for s in range(0, n, block):
        cols = np.arange(s, min(n, s + block))
        g = (zc[:, cols].T @ zs).toarray()  # (b, L)
        rho = (g - t * mu[cols, None] * mu[None, :]) / (t * np.maximum(sd[cols, None] * sd[None, :], 1e-300))
        rho[~ok[cols]] = 0.0
        rho[:, ~ok] = 0.0
        rho[np.arange(len(cols)), cols] = 0.0
        a = np.abs(rho)
        j = a.argmax(1)
        c[cols] = torch.from_numpy(np.minimum(a[np.arange(len(cols)), j], 1.0))
        partner[cols] = torch.from_numpy(np.where(a[np.arange(len(cols)), j] > 0, j, -1))
    return c, partner


def _permuted_max(
    zs: sp.csr_matrix,
    i: int,
    rows: np.ndarray,
    vals: np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    ok: np.ndarray,
    perms: np.ndarray,
) -> np.ndarray:
    """c_i^π for each row of ``perms`` (R, nnz_i): latent i's nonzeros moved to those token rows."""
    t = zs.shape[0]
    r, k = perms.shape
    w = sp.csr_matrix((np.tile(vals, r), perms.ravel(), np.arange(0, r * k + 1, k)), shape=(r, t))
    s = (w @ zs).toarray()  # (R, L): Σ_k v_k z[π_k, j]
    rho = (s - mu[None, :] * vals.sum()) / (t * max(sd[i], 1e-300) * np.maximum(sd[None, :], 1e-300))
    rho[:, ~ok] = 0.0
    rho[:, i] = 0.0
    return np.minimum(np.abs(rho).max(1), 1.0)


def correlated_mask(
    z: Tensor,
    c: Tensor,
    *,
    threshold: float = 0.3,
    alpha: float = 0.05,
    draws: int = 99,
    seed: int = 0,
    chunk: int = 33,
) -> tuple[Tensor, Tensor]:
    """(correlated, p_value) per latent: c_i ≥ ``threshold`` and permutation p_i ≤ ``alpha`` (module docstring).

    Latents with c_i < threshold are not tested (p = 1). Draws run in chunks and stop once p_i can no
    longer reach ``alpha`` (⌈α(R+1)⌉ − 1 exceedances seen), so chance correlations cost a few draws.
    """
    t, n = z.shape
    p = torch.ones(n, dtype=torch.float64)
    todo = np.flatnonzero(c.numpy() >= threshold)
    if not len(todo):
        return torch.zeros(n, dtype=torch.bool), p
    zs = sp.csr_matrix(z.double().numpy())
    zc = zs.tocsc()
    mu, sd = _moments(zs)
    ok = _ok(sd)
    rng = np.random.default_rng([seed, 31])
    stop = math.ceil(alpha * (draws + 1))  # exceedances that rule out p ≤ α
    for i in todo.tolist():
        col = zc[:, i]
        rows, vals = col.indices, col.data
        hits, done = 0, 0
        while done < draws and hits < stop:
            m = min(chunk, draws - done)
            perms = np.stack([rng.choice(t, size=len(rows), replace=False) for _ in range(m)])
            hits += int((_permuted_max(zs, i, rows, vals, mu, sd, ok, perms) >= float(c[i]) - 1e-12).sum())
            done += m
        p[i] = (1 + hits) / (1 + done)  # stopped early: (1 + hits)/(1 + done) > α already
    return (c >= threshold) & (p <= alpha), p


def permute_columns(z: Tensor, seed: int) -> Tensor:
    """Each latent's values moved to tokens drawn independently (same values and density, no dependence)."""
    rng = np.random.default_rng([seed, 37])
    out = torch.zeros_like(z)
    t = z.shape[0]
    for j in range(z.shape[1]):
        col = z[:, j]
        nz = torch.nonzero(col).squeeze(1)
        if len(nz):
            out[torch.from_numpy(rng.choice(t, size=len(nz), replace=False)), j] = col[nz]
    return out


def decorrelation(
    z: Tensor, *, threshold: float = 0.3, alpha: float = 0.05, draws: int = 99, seed: int = 0
) -> dict[str, Tensor | float]:
    """Per-latent c, partner, p-value and verdict, plus ``frac_decorrelated`` and its chance level ``null``."""
    c, partner = max_abs_correlation(z)
    corr, p = correlated_mask(z, c, threshold=threshold, alpha=alpha, draws=draws, seed=seed)
    zn = permute_columns(z, seed)
    c0, _ = max_abs_correlation(zn)
    corr0, _ = correlated_mask(zn, c0, threshold=threshold, alpha=alpha, draws=draws, seed=seed + 1)
    n = z.shape[1]
    return {
        "max_abs_corr": c,
        "partner": partner,
        "p_value": p,
        "correlated": corr,
        "frac_decorrelated": float((~corr).double().mean()) if n else 0.0,
        "null": float((~corr0).double().mean()) if n else 0.0,
    }


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _independent(rng: np.random.Generator, n_tokens: int, n_lat: int, density: float) -> Tensor:
    z = rng.exponential(1.0, size=(n_tokens, n_lat)) * (rng.random((n_tokens, n_lat)) < density)
    return torch.from_numpy(z)


def _independent_share(ctx, n_tokens: int) -> float:
    """200 independent sparse latents (densities 0.5–5 %): frac_decorrelated."""
    rng = ctx.rng(n_tokens)
    z = _independent(rng, n_tokens, 200, 1.0) * torch.from_numpy(
        rng.random((n_tokens, 200)) < np.linspace(0.005, 0.05, 200)[None, :]
    )
    return cast(float, decorrelation(z, seed=ctx.seed)["frac_decorrelated"])


def _copies_found(ctx) -> float:
    """20 latents each present twice (density 3 %, 2000 tokens) among 160 independent ones: share of the 40
    copies judged correlated."""
    rng = ctx.rng(3)
    z = _independent(rng, 2000, 180, 0.03)
    z[:, 160:] = z[:, 140:160]
    corr = cast(Tensor, decorrelation(z, seed=ctx.seed)["correlated"])
    return float(corr[140:].double().mean())


def _register_controls() -> None:

    for n in (500, 4000):
        control(
            "sae_frac_decorrelated",
            "negative",
            f"200 independent latents, {n} tokens",
            expect="share ≥ 0.92 (chance level ≥ 0.95 for any token count)",
            check=lambda v: v >= 0.92,
        )(lambda ctx, n=n: _independent_share(ctx, n))
    control(
        "sae_frac_decorrelated",
        "negative",
        "independent latents: share at 500 − share at 4000 tokens",
        expect="|difference| ≤ 0.08 (both lie in [1 − α, 1] = [0.95, 1], up to sampling)",
        check=lambda v: abs(v) <= 0.08,
    )(lambda ctx: _independent_share(ctx, 500) - _independent_share(ctx, 4000))
    control(
        "sae_frac_decorrelated",
        "positive",
        "20 planted pairs of identical latents",
        expect="share ≥ 0.95",
        check=lambda v: v >= 0.95,
    )(_copies_found)


_register_controls()
