"""MonoSemanticity Score of SAE latents and its exact permutation test (SPEC.md §5).

MS (Pach et al. 2025, adapted to text): for latent i take its top-n contexts; a_n = the activation
min-max normalised over all contexts, (z − min z)/(max z − min z); s_nm = cosine similarity of the
embeddings of contexts n and m; MS_i = Σ_{n<m} a_n a_m s_nm / Σ_{n<m} a_n a_m. MS is NaN when fewer
than two of the top-n contexts have a_n > 0.

The test (changed in monobench 0.2, the formula is unchanged): a latent is *interpretable* when its
MS is significantly above what the same activations would score on contexts unrelated to the latent.

- **Distinct contexts.** Scores and nulls run over distinct context strings only (``distinct_first``:
  the first token of each string stands for it). Identical contexts (a shared prompt, a repeated
  text) have cosine 1 and would make any latent that fires on both look monosemantic.
- **Per-latent exact null.** For each latent, R draws (``null_draws``, default 99) of n distinct
  contexts uniformly without replacement, paired with the latent's own a_1…a_n; the p-value is
  p_i = (1 + #{MS_null ≥ MS_i}) / (R + 1), and interpretable ⇔ p_i ≤ α. Under the null (the latent's
  ranking carries no information about the contexts) the contexts of its top-n are a uniform random
  n-subset, so P(p_i ≤ α) ≤ α exactly, for any R with α(R + 1) ≥ 1. The old test (MS above the 95th
  percentile of 50 draws shared by all latents, over all tokens) flagged 11 % of meaningless latents
  without duplicates and 24–81 % with 14–50 % duplicated tokens.

Cost: R · n · emb_dim per latent as batched products (3072 latents, R = 99, n = 32, 384 dims ≈ 4 GFLOP).

Example::

    python -c "import torch; from saes.monosemanticity import monosemanticity_scores as f; \
print(f(torch.rand(200, 3), torch.nn.functional.normalize(torch.randn(200, 8), dim=1), top_n=8))"
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from beartype import beartype
from jaxtyping import Float, jaxtyped
from torch import Tensor

from bench.core.controls import control
from bench.core.errors import check_finite


def distinct_first(keys: Sequence[Hashable]) -> np.ndarray:
    """Indices of the first occurrence of each distinct key, in order."""
    seen: dict[Hashable, int] = {}
    for i, k in enumerate(keys):
        seen.setdefault(k, i)
    return np.fromiter(seen.values(), dtype=np.int64, count=len(seen))


def ms_from_weights(a: Tensor, emb_sum: Tensor) -> Tensor:
    """MS from a (…, n) and v = Σ_n a_n e_n (…, D) with unit e_n: ‖v‖² = Σ a_n² + 2 Σ_{n<m} a_n a_m s_nm,
    (Σ a_n)² = Σ a_n² + 2 Σ_{n<m} a_n a_m, so MS = (‖v‖² − Σ a²) / ((Σ a)² − Σ a²)."""
    a2 = a.pow(2).sum(-1)
    num = emb_sum.pow(2).sum(-1) - a2
    den = a.sum(-1).pow(2) - a2
    return torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.full_like(num, math.nan))


def distinct_subsets(gen: torch.Generator, rows: int, n: int, pool: int) -> Tensor:
    """(rows, n) indices into range(pool), distinct within each row, uniform over ordered n-subsets.

    Rejection sampling (draw with replacement, redraw rows with a repeat) when n² ≤ 2·pool, where a
    row repeats with probability ≲ 0.4; otherwise the first n of a random permutation per row.
    """
    if n > pool:
        raise ValueError(f"cannot draw {n} distinct contexts from {pool}")
    if n * n > 2 * pool:
        return torch.rand(rows, pool, generator=gen).argsort(dim=1)[:, :n]
    out = torch.randint(pool, (rows, n), generator=gen)
    while True:
        srt = out.sort(dim=1).values
        bad = (srt[:, 1:] == srt[:, :-1]).any(dim=1).nonzero().squeeze(1)
        if not len(bad):
            return out
        out[bad] = torch.randint(pool, (len(bad), n), generator=gen)


@jaxtyped(typechecker=beartype)
def monosemanticity_scores(
    z: Float[Tensor, "ctx lat"],
    emb: Float[Tensor, "ctx emb_dim"],
    *,
    top_n: int = 32,
    null_draws: int = 99,
    seed: int = 0,
) -> tuple[Float[Tensor, " lat"], Float[Tensor, " lat"], Float[Tensor, " lat"]]:
    """(MS, permutation p-value, 95th percentile of the null) per latent; rows of z and emb are distinct
    contexts (see ``distinct_first``). NaN MS has p = 1."""
    check_finite(z, "SAE latents")
    check_finite(emb, "context embeddings")
    n_ctx, n_lat = z.shape
    n = min(top_n, n_ctx)
    vals, idx = z.float().topk(n, dim=0)  # (n, lat)
    lo, hi = z.float().amin(0), z.float().amax(0)
    a = ((vals - lo) / (hi - lo).clamp_min(1e-12)).clamp_(0.0, 1.0).T  # (lat, n)
    e = emb.float() / emb.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)  # s_nm = cosine
    gen = torch.Generator().manual_seed(seed)
    ms, p, q95 = (torch.full((n_lat,), math.nan) for _ in range(3))
    ms_all = ms_from_weights(a, F.embedding_bag(idx.T, e, per_sample_weights=a, mode="sum"))
    block = max(1, 2**23 // max(1, null_draws * e.shape[1]))  # latents per block: ≤ 8M floats of Σ a_n e_n
    for s in range(0, n_lat, block):
        a_b, ms_b = a[s : s + block], ms_all[s : s + block]  # (b, n), (b,)
        draws = distinct_subsets(gen, len(a_b) * null_draws, n, n_ctx)  # (b·R, n)
        a_r = a_b.repeat_interleave(null_draws, dim=0)  # each latent's weights on each of its R draws
        v = F.embedding_bag(draws, e, per_sample_weights=a_r, mode="sum")  # Σ_n a_n e_{d_n}, (b·R, D)
        null = ms_from_weights(a_r, v).view(len(a_b), null_draws)  # (b, R)
        exceed = (torch.nan_to_num(null, nan=-math.inf) >= ms_b[:, None]).sum(1)
        ms[s : s + block] = ms_b
        p[s : s + block] = torch.where(ms_b.isnan(), torch.ones_like(ms_b), (1.0 + exceed) / (null_draws + 1.0))
        q95[s : s + block] = torch.nanquantile(null, 0.95, dim=1)
    return ms, p, q95


def interpretable(p_value: Tensor, alpha: float = 0.05) -> Tensor:
    """Latents whose MS is significant at level α (p ≤ α)."""
    return p_value <= alpha


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _random_latents(rng: np.random.Generator, n_tokens: int, n_lat: int, density: float = 0.05) -> Tensor:
    z = rng.exponential(1.0, size=(n_tokens, n_lat)) * (rng.random((n_tokens, n_lat)) < density)
    return torch.from_numpy(z.astype(np.float32))


def flagged_share(z: Tensor, contexts: Sequence[str], emb: np.ndarray, *, seed: int, alpha: float = 0.05) -> float:
    """The scorer's path on a token set: distinct contexts, per-latent test, share of latents flagged."""
    first = distinct_first(contexts)
    _, p, _ = monosemanticity_scores(z[torch.from_numpy(first)], torch.from_numpy(emb[first]), seed=seed)
    return float(interpretable(p, alpha).float().mean())


def _with_twins(ctx, dup: float, salt: int) -> float:
    """300 meaningless latents over real contexts where a share ``dup`` of tokens repeats an earlier token
    (same context, same activation: what a shared prefix makes)."""
    texts, _ = ctx.topic_contexts()
    emb = ctx.embeddings(texts)
    rng = ctx.rng(salt)
    n = len(texts)
    n_twin = int(dup / (1 - dup) * n)
    src = np.concatenate([np.arange(n), rng.integers(0, n, size=n_twin)])  # token → its context
    z_ctx = _random_latents(rng, n, 300)  # one activation per context
    return flagged_share(z_ctx[torch.from_numpy(src)], [texts[i] for i in src], emb[src], seed=salt)


def _register_negative_controls() -> None:

    for k, dup in enumerate((0.0, 0.14, 0.30, 0.50)):
        control(
            "sae_frac_interpretable",
            "negative",
            f"300 random latents, {dup:.0%} duplicated tokens",
            expect="share ≤ 0.08 (nominal 0.05)",
            check=lambda v: v <= 0.08,
        )(lambda ctx, dup=dup, k=k: _with_twins(ctx, dup, 100 + k))


_register_negative_controls()


def _planted_topic_latents(ctx) -> float:
    """30 latents that each fire only on contexts of one topic (sports news or Python code; a quarter of that
    topic's contexts, world news never): the share judged interpretable."""
    texts, topics = ctx.topic_contexts()
    emb = ctx.embeddings(texts)
    rng = ctx.rng(7)
    z = _random_latents(rng, len(texts), 30, density=0.0)
    for j in range(30):
        on = np.flatnonzero((topics == 1 + j % 2) & (rng.random(len(texts)) < 0.25))
        z[torch.from_numpy(on), j] = torch.from_numpy(rng.exponential(1.0, len(on)).astype(np.float32) + 0.1)
    return flagged_share(z, texts, emb, seed=7)


def _register_positive_control() -> None:

    control(
        "sae_frac_interpretable",
        "positive",
        "30 latents planted on one topic each",
        expect="share ≥ 0.9",
        check=lambda v: v >= 0.9,
    )(_planted_topic_latents)


_register_positive_control()
