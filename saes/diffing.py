"""What alignment changed in a base SAE's latents (issue 18): frequency shifts, decoder drift, concept latents.

All comparisons are paired: the same held-out corpus tokens read by the base model and by an aligned model
(``saes.replay``), or two fine-tunes of one base SAE that differ only in the model whose activations they
saw (``saes.finetune``).

- **Frequency change** of latent i on document d: δ_id = r_id(model) − r_id(base), r = share of the
  document's held-out tokens on which the latent fires. Test statistic T_i = mean_d δ_id; its null flips the
  sign of each document's δ_d (under "no change" the two models' readings of a document are exchangeable):
  p_i = (1 + #{r : |T_i^(r)| ≥ |T_i|}) / (draws + 1), one sign-flip draw shared by all latents. Documents,
  not tokens, are the units (tokens of one document are not independent). ``sae_transfer_freq_changed`` is
  the share of alive latents (firing on either model) with Benjamini–Hochberg q ≤ α.
- **Decoder drift** of latent i: cos(W_dec,i(fine-tune on the model), W_dec,i(fine-tune on the base model));
  ``sae_drift_frac`` = share of latents alive in the base SAE with cos < threshold, ``sae_drift_decoder`` =
  their mean 1 − cos. The base model against itself gives 0 by construction (same inputs, same seed).
- **Concept rank**, density-matched: the alive latents are cut into ``bins`` (20) equal-count groups by firing
  rate (mean of the two models' rates); each concept latent's |T_i| gets its percentile rank (r − ½)/n among
  the n alive latents of its group (r = rank, ties averaged), and the metric is their mean. 0.5 ⇔ the
  concept latents changed like latents that fire as often (or nothing changed), → 1 ⇔ they changed most.
  The matching matters: |T| grows with how often a latent fires, concept latents fire more often than most,
  and an unmatched rank put them at 0.87–0.90 even for a re-initialised model (``results/default``).
- **Jaccard** of two methods' top-changed latent sets, with its chance level for random sets of that size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from bench.core.controls import control

if TYPE_CHECKING:
    from sae_lens import SAE


def doc_rates(active: Tensor, doc: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """(D, L) firing rate of every latent per document, and the document ids (sorted) of the rows.

    ``active`` is (rows, L) boolean/0-1; ``doc`` the document of each row."""
    ids, inv = np.unique(doc, return_inverse=True)
    counts = torch.zeros(len(ids), active.shape[1], dtype=torch.float64)
    counts.index_add_(0, torch.from_numpy(inv.astype(np.int64)), active.double())
    n = torch.from_numpy(np.bincount(inv).astype(np.float64))[:, None]
    return counts / n, ids


def sign_flip_test(delta: Tensor, *, draws: int = 999, seed: int = 0, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """(T, p) per latent for the paired differences ``delta`` (D documents × L latents); see module docstring."""
    d = delta.double()
    n_docs = d.shape[0]
    t = d.mean(0)
    flips = torch.from_numpy(np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, n_docs)))
    exceed = torch.zeros(d.shape[1], dtype=torch.float64)
    for s in range(0, d.shape[1], chunk):
        null = (flips @ d[:, s : s + chunk]).abs() / n_docs
        exceed[s : s + chunk] = (null >= t[s : s + chunk].abs()[None] - 1e-12).double().sum(0)
    return t, (1 + exceed) / (draws + 1)


def bh_reject(p: Tensor, q: float = 0.05) -> Tensor:
    """Benjamini–Hochberg: which hypotheses are rejected at false-discovery rate ``q``."""
    m = p.numel()
    if m == 0:
        return torch.zeros(0, dtype=torch.bool)
    order = torch.argsort(p)
    ok = p[order] <= q * torch.arange(1, m + 1, dtype=p.dtype) / m
    k = int(torch.nonzero(ok).max()) + 1 if ok.any() else 0
    out = torch.zeros(m, dtype=torch.bool)
    out[order[:k]] = True
    return out


def share_changed(t_p: tuple[Tensor, Tensor], alive: Tensor, q: float = 0.05) -> float:
    """Share of ``alive`` latents whose frequency change is significant at BH false-discovery rate ``q``."""
    _, p = t_p
    if not alive.any():
        return float("nan")
    return float(bh_reject(p[alive], q).double().mean())


def decoder_cosine(w_ref: Tensor, w: Tensor) -> Tensor:
    """cos(W_ref,i, W_i) per latent (rows are latents)."""
    return torch.nn.functional.cosine_similarity(w_ref.double(), w.double(), dim=1)


def drift_metrics(ref: SAE, ft: SAE, alive: Tensor, threshold: float) -> tuple[Tensor, dict[str, float | None]]:
    """Per-latent decoder cosine of SAE ``ft`` against ``ref`` (both with ``W_dec`` (latents, d) and ``W_enc``
    (d, latents)), and over the ``alive`` latents: ``sae_drift_frac`` = share with cos < ``threshold``,
    ``sae_drift_decoder`` = mean 1 − cos, ``sae_drift_encoder`` = mean ‖W_enc,i − W_enc,i(ref)‖ / ‖W_enc,i(ref)‖
    (None where no latent is alive)."""
    cos = decoder_cosine(ref.W_dec.detach(), ft.W_dec.detach())
    w_ref = ref.W_enc.detach()
    enc_change = (ft.W_enc.detach() - w_ref).norm(dim=0) / w_ref.norm(dim=0).clamp_min(1e-12)
    if not alive.any():
        return cos, {"sae_drift_frac": None, "sae_drift_decoder": None, "sae_drift_encoder": None}
    return cos, {
        "sae_drift_frac": float((cos[alive] < threshold).double().mean()),
        "sae_drift_decoder": float((1 - cos[alive]).mean()),
        "sae_drift_encoder": float(enc_change[alive].double().mean()),
    }


def concept_rank(
    change: Tensor, concept: np.ndarray, alive: Tensor, rate: Tensor | None = None, bins: int = 20
) -> float:
    """Mean density-matched percentile rank of the concept latents' |change| (chance 0.5; module docstring).

    ``rate`` is each latent's firing rate (None = one group: the plain rank among all alive latents)."""
    alive_idx = torch.nonzero(alive).flatten().numpy()
    keep = np.intersect1d(concept, alive_idx)
    if len(keep) == 0 or len(alive_idx) < 2:
        return float("nan")
    size = np.abs(change.numpy()[alive_idx])
    if rate is None:
        group = np.zeros(len(alive_idx), dtype=int)
    else:  # equal-count groups by rate (ties broken by index, so every group holds ⌊n/bins⌋ or one more)
        order = np.lexsort((alive_idx, rate.numpy()[alive_idx]))
        group = np.empty(len(alive_idx), dtype=int)
        group[order] = np.arange(len(alive_idx)) * min(bins, len(alive_idx)) // len(alive_idx)
    pct = np.empty(len(alive_idx))
    for g in np.unique(group):
        members = group == g
        pct[members] = (stats.rankdata(size[members], method="average") - 0.5) / members.sum()
    return float(pct[np.searchsorted(alive_idx, keep)].mean())


def top_changed(t: Tensor, alive: Tensor, n: int) -> list[int]:
    """The ``n`` alive latents with the largest |T| (ties by index)."""
    score = torch.where(alive, t.abs(), torch.full_like(t, -1.0, dtype=t.dtype))
    order = np.lexsort((np.arange(len(score)), -score.numpy()))
    return [int(i) for i in order[: min(n, int(alive.sum()))]]


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def jaccard_chance(k: int, n: int) -> float:
    """E[|A∩B| / |A∪B|] for two independent uniformly random k-subsets of n items (exact, hypergeometric)."""
    if k <= 0 or n <= 0:
        return float("nan")
    i = np.arange(0, k + 1)
    pmf = stats.hypergeom(n, k, k).pmf(i)
    return float((pmf * i / np.maximum(2 * k - i, 1)).sum())


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _rates_pair(ctx, planted: int, salt: int) -> tuple[Tensor, Tensor, np.ndarray]:
    """Two readings of 150 documents × 400 latents: binomial firing around shared per-(doc, latent) rates;
    the first ``planted`` latents fire 1.6× as often in the second reading."""
    rng = ctx.rng(salt)
    base = rng.beta(0.5, 12.0, size=(150, 400))
    lift = np.ones(400)
    lift[:planted] = 1.6
    a = rng.binomial(40, base) / 40
    b = rng.binomial(40, np.minimum(base * lift, 1.0)) / 40
    return torch.from_numpy(a), torch.from_numpy(b), np.arange(planted)


def _raw_false_positive_rate(ctx) -> float:
    a, b, _ = _rates_pair(ctx, 0, 71)
    return float((sign_flip_test(b - a, seed=1)[1] <= 0.05).double().mean())


def _bh_share_null(ctx) -> float:
    a, b, _ = _rates_pair(ctx, 0, 72)
    return share_changed(sign_flip_test(b - a, seed=2), torch.ones(400, dtype=torch.bool))


def _planted_recall(ctx) -> float:
    a, b, planted = _rates_pair(ctx, 40, 73)
    _, p = sign_flip_test(b - a, seed=3)
    return float(bh_reject(p)[planted].double().mean())


def _concept_rank_null(ctx) -> float:
    rng = ctx.rng(74)
    change, alive = torch.from_numpy(rng.standard_normal(500)), torch.ones(500, dtype=torch.bool)
    return float(np.mean([concept_rank(change, rng.choice(500, 5, replace=False), alive) for _ in range(400)]))


def _concept_rank_density_null(ctx) -> float:
    """Every latent changes in proportion to how often it fires; concept latents are drawn ∝ their rate."""
    rng = ctx.rng(77)
    rate = torch.from_numpy(rng.lognormal(-4.0, 1.0, 2000))
    change = rate * torch.from_numpy(1.0 + 0.3 * rng.standard_normal(2000))
    alive, weights = torch.ones(2000, dtype=torch.bool), (rate / rate.sum()).numpy()
    draws = [concept_rank(change, rng.choice(2000, 20, replace=False, p=weights), alive, rate) for _ in range(200)]
    return float(np.mean(draws))


def _concept_rank_planted(ctx) -> float:
    rng = ctx.rng(75)
    change = torch.from_numpy(rng.standard_normal(500))
    concept = rng.choice(500, 5, replace=False)
    change[concept] = 10.0 + torch.from_numpy(rng.random(5))
    return concept_rank(change, concept, torch.ones(500, dtype=torch.bool))


def _jaccard_null(ctx) -> float:
    rng = ctx.rng(76)
    draws = [
        jaccard(set(rng.choice(300, 20, replace=False)), set(rng.choice(300, 20, replace=False))) for _ in range(2000)
    ]
    return float(np.mean(draws) / jaccard_chance(20, 300))


def _jaccard_planted(ctx) -> float:
    """Two models whose frequency-change statistics share a planted shift of 3 on the same 20 of 300 alive
    latents (independent N(0, 1) noise each): Jaccard of their ``top_changed`` 20-sets / chance level."""
    rng = ctx.rng(77)
    shift = np.zeros(300)
    shift[rng.choice(300, 20, replace=False)] = 3.0
    alive = torch.ones(300, dtype=torch.bool)
    a, b = (set(top_changed(torch.from_numpy(shift + rng.standard_normal(300)), alive, 20)) for _ in range(2))
    return jaccard(a, b) / jaccard_chance(20, 300)


def _register_controls() -> None:
    control(
        "sae_transfer_freq_changed",
        "negative",
        "two exchangeable readings of 150 documents: per-latent p ≤ 0.05 before BH",
        expect="rate 0.02–0.08 (nominal 0.05)",
        check=lambda v: 0.02 <= v <= 0.08,
    )(_raw_false_positive_rate)
    control(
        "sae_transfer_freq_changed",
        "negative",
        "two exchangeable readings of 150 documents: share changed (BH q ≤ 0.05)",
        expect="≤ 0.01",
        check=lambda v: v <= 0.01,
    )(_bh_share_null)
    control(
        "sae_transfer_freq_changed",
        "positive",
        "40 of 400 latents fire 1.6× as often: share of them found",
        expect="≥ 0.9",
        check=lambda v: v >= 0.9,
    )(_planted_recall)
    control(
        "sae_transfer_concept_rank",
        "negative",
        "5 random latents of 500 with random changes (mean of 400 draws)",
        expect="0.47–0.53 (chance 0.5)",
        check=lambda v: 0.47 <= v <= 0.53,
    )(_concept_rank_null)
    control(
        "sae_transfer_concept_rank",
        "negative",
        "change ∝ firing rate for all 2000 latents, 20 concept latents drawn ∝ rate (mean of 200 draws)",
        expect="0.45–0.55 (chance 0.5; unmatched ranks give ≈ 0.8)",
        check=lambda v: 0.45 <= v <= 0.55,
    )(_concept_rank_density_null)
    control(
        "sae_transfer_concept_rank",
        "positive",
        "5 concept latents given the 5 largest changes of 500",
        expect="≥ 0.99",
        check=lambda v: v >= 0.99,
    )(_concept_rank_planted)
    control(
        "sae_transfer_top_jaccard",
        "negative",
        "random 20-latent sets of 300: mean Jaccard / its exact chance level",
        expect="0.9–1.1",
        check=lambda v: 0.9 <= v <= 1.1,
    )(_jaccard_null)
    control(
        "sae_transfer_top_jaccard",
        "positive",
        "a shared planted shift of 3 (noise sd 1) on 20 of 300 latents: Jaccard / chance",
        expect="≥ 4 (8.2–15.3 over seeds 0–3; chance 1, identical sets 28.3)",
        check=lambda v: v >= 4,
    )(_jaccard_planted)


_register_controls()
