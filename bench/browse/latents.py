"""What a latent's page shows, computed from an SAE and the activations it reads (no model forward).

A ``Reading`` is an SAE's latents on a set of stored held-out tokens: the SAE's own store (fresh SAEs, and the
base SAE on the base model), or another model's activations at the same tokens (``saes.replay``). Contexts are
windows of the token's document (``context_before`` tokens up to it, ``context_after`` past it); each shown
token carries the latent's activation where the reading has that token (a held-out token), else null.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from saes.store import ActivationStore


@dataclass
class Reading:
    """``sae`` on the store rows ``rows`` whose activations are ``x`` (one row of ``x`` per entry of ``rows``)."""

    store: ActivationStore
    rows: np.ndarray
    x: torch.Tensor
    sae: Any

    @cached_property
    def z(self) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, self.x.shape[0], 4096):
                z = self.sae.encode(self.x[s : s + 4096].to(self.sae.W_dec.device))
                out.append((z.to_dense() if z.is_sparse else z).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.sae.cfg.d_sae)

    @cached_property
    def doc(self) -> np.ndarray:
        return np.asarray(self.store.doc_index[self.rows])

    @cached_property
    def _at(self) -> dict[tuple[int, int], int]:
        pos = np.asarray(self.store.positions[self.rows])
        return {(int(d), int(p)): i for i, (d, p) in enumerate(zip(self.doc, pos))}

    def density(self) -> np.ndarray:
        return (self.z != 0).double().mean(0).numpy() if len(self.z) else np.zeros(self.sae.cfg.d_sae)

    def context(self, i: int, latent: int, tokenizer, before: int, after: int) -> dict[str, Any]:
        """The window around reading row ``i``: tokens with the latent's activation (null where not read)."""
        row = int(self.rows[i])
        d, p = int(self.store.doc_index[row]), int(self.store.positions[row])
        ids = self.store.doc(d)
        lo, hi = max(0, p - before + 1), min(len(ids), p + after + 1)
        toks = []
        for q in range(lo, hi):
            j = self._at.get((d, q))
            toks.append([tokenizer.decode([ids[q]]), None if j is None else round(float(self.z[j, latent]), 4)])
        return {"doc": d, "pos": p, "at": p - lo, "value": round(float(self.z[i, latent]), 4), "tokens": toks}

    def top_contexts(self, latent: int, tokenizer, n: int, before: int, after: int) -> list[dict[str, Any]]:
        """The ``n`` highest activations, one per document."""
        col = self.z[:, latent] if len(self.z) else torch.zeros(0)
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for i in torch.argsort(col, descending=True).tolist():
            if col[i] <= 0 or len(out) == n:
                break
            if self.doc[i] in seen:
                continue
            seen.add(self.doc[i])
            out.append(self.context(i, latent, tokenizer, before, after))
        return out

    def random_contexts(self, latent: int, tokenizer, n: int, before: int, after: int, seed: int) -> list[dict]:
        active = torch.nonzero(self.z[:, latent] > 0).flatten().numpy() if len(self.z) else np.zeros(0, int)
        pick = np.random.default_rng([seed, latent]).permutation(active)[:n]
        return [self.context(int(i), latent, tokenizer, before, after) for i in sorted(pick)]

    def histogram(self, latent: int, bins: int) -> dict[str, list[float]]:
        v = self.z[:, latent][self.z[:, latent] > 0].numpy() if len(self.z) else np.zeros(0)
        if v.size == 0:
            return {"edges": [], "counts": []}
        counts, edges = np.histogram(v, bins=bins)
        return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def heldout_reading(store: ActivationStore, sae) -> Reading:
    """The SAE on every held-out token of its store."""
    rows = np.arange(store.n_train, store.n_train + store.n_heldout)
    return Reading(store, rows, store.rows(rows), sae)


def best_matches(w_a: torch.Tensor, w_b: torch.Tensor, latents: list[int]) -> list[tuple[int, float]]:
    """For each latent of SAE a, the latent of SAE b whose decoder direction is closest (cosine) and the cosine."""
    a = torch.nn.functional.normalize(w_a[latents].float(), dim=1)
    b = torch.nn.functional.normalize(w_b.float(), dim=1)
    cos = a @ b.T
    best = cos.max(1)
    return [(int(j), round(float(c), 4)) for j, c in zip(best.indices, best.values)]
