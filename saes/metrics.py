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
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from bench.core.controls import control
from bench.core.errors import check_finite


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
def feature_density(z: Float[Tensor, "tok d_sae"]) -> Float[Tensor, " d_sae"]:
    """p_i = (1/N) Σ_t 1[z_ti ≠ 0]."""
    check_finite(z, "SAE latents")
    return (z != 0).double().mean(0)


@jaxtyped(typechecker=beartype)
def sae_l0(density: Float[Tensor, " d_sae"]) -> float:
    """Mean active latents per token: (1/N) Σ_t Σ_i 1[z_ti ≠ 0] = Σ_i p_i."""
    return float(density.sum())


@jaxtyped(typechecker=beartype)
def sae_dead_frac(density: Float[Tensor, " d_sae"]) -> float:
    """Share of latents never active on the held-out tokens (p_i = 0)."""
    return float((density == 0).double().mean())


@jaxtyped(typechecker=beartype)
def sae_dense_frac(density: Float[Tensor, " d_sae"], threshold: float = 0.1) -> float:
    """Share of latents active on more than ``threshold`` of held-out tokens (p_i > threshold)."""
    return float((density > threshold).double().mean())


def sae_ce_score(ce_clean: float, ce_sae: float, ce_zero: float, min_gap: float = 1e-9) -> float:
    """(CE_zero-abl − CE_sae) / (CE_zero-abl − CE_clean): 1 = SAE loses nothing, 0 = as bad as zeroing.

    NaN when zero-ablation changes the loss by less than ``min_gap`` nats (either way): the score is then a ratio of
    differences smaller than their noise (SmolLM2 layer 15 ``up_proj`` on sycophancy prompts: a gap of
    0.002–0.016 nats gave scores from −29 to +8); ``CE_sae − CE_clean`` stays defined and is reported.
    """
    for name, v in (("ce_clean", ce_clean), ("ce_sae", ce_sae), ("ce_zero", ce_zero)):
        if not math.isfinite(v):
            raise ValueError(f"{name} = {v} is not finite; the spliced forward produced NaN/inf")
    gap = ce_zero - ce_clean
    return (ce_zero - ce_sae) / gap if abs(gap) >= max(min_gap, 1e-9) else math.nan


@jaxtyped(typechecker=beartype)
def k_sparse_probe_accuracy(
    features: Float[Tensor, "text d_sae"],
    labels: Int[Tensor, " text"],
    k: int,
    train_idx: Int[Tensor, " n_train"],
    test_idx: Int[Tensor, " n_test"],
) -> float:
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


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _activations(ctx, n: int = 2000, d: int = 64) -> Tensor:
    return torch.from_numpy(ctx.rng(11).standard_normal((n, d)) * np.linspace(0.5, 2.0, d))


def _register_controls() -> None:

    control(
        "sae_explained_variance",
        "negative",
        "reconstruction = the mean activation",
        expect="= 0",
        check=lambda v: abs(v) < 1e-9,
    )(lambda ctx: sae_explained_variance(x := _activations(ctx), x.mean(0, keepdim=True).expand_as(x).contiguous()))
    control(
        "sae_explained_variance",
        "negative",
        "reconstruction of another token (rows shuffled)",
        expect="≤ 0 (≈ −1)",
        check=lambda v: v <= 0,
    )(lambda ctx: sae_explained_variance(x := _activations(ctx), x[torch.from_numpy(ctx.rng(12).permutation(len(x)))]))
    control(
        "sae_explained_variance",
        "positive",
        "reconstruction = x + noise of 1 % of its variance",
        expect="0.98–1.0",
        check=lambda v: 0.98 <= v <= 1.0,
    )(
        lambda ctx: sae_explained_variance(
            x := _activations(ctx), x + 0.1 * x.std(0) * torch.from_numpy(ctx.rng(13).standard_normal(x.shape))
        )
    )
    control(
        "sae_l0", "positive", "latents with exactly 7 active per token", expect="= 7", check=lambda v: abs(v - 7) < 1e-9
    )(
        lambda ctx: sae_l0(
            feature_density(torch.from_numpy((np.argsort(ctx.rng(14).random((500, 64)), 1) < 7).astype(np.float32)))
        )
    )
    control(
        "sae_dead_frac",
        "positive",
        "16 of 64 latents never active",
        expect="= 0.25",
        check=lambda v: abs(v - 0.25) < 1e-9,
    )(
        lambda ctx: sae_dead_frac(
            feature_density(torch.from_numpy(ctx.rng(15).random((500, 64)).astype(np.float32) * (np.arange(64) >= 16)))
        )
    )
    control(
        "sae_dead_frac",
        "negative",
        "each of 64 latents active on exactly one random token of 500 (rare, not dead)",
        expect="= 0",
        check=lambda v: v == 0,
    )(
        lambda ctx: sae_dead_frac(
            feature_density(torch.from_numpy(_one_hot_rows(ctx.rng(16).integers(0, 500, 64), 500)))
        )
    )


def _one_hot_rows(rows: np.ndarray, n_tokens: int) -> np.ndarray:
    """(n_tokens, len(rows)) float32 activations: latent j is 1.0 on token rows[j] and 0 elsewhere."""
    acts = np.zeros((n_tokens, len(rows)), dtype=np.float32)
    acts[rows, np.arange(len(rows))] = 1.0
    return acts


_register_controls()
