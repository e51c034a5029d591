"""Cross-check monobench's SAE scores against SAELens's own evaluation code on the same tokens.

``sae_lens.evals.run_evals`` wants a TransformerLens-style model and a SAELens ``ActivationsStore``.
Neither is needed below it: ``get_sparsity_and_variance_metrics`` and
``get_downstream_reconstruction_metrics`` only call ``model.run_with_cache`` / ``model.run_with_hooks`` /
``model(tokens, return_type="both")`` and ``activation_store.get_batch_tokens(n)``. SAELens's own
``HookedProxyLM`` (sae_lens.load_model) gives a Hugging Face model the first three, and
``_HeldoutTokens`` below serves the store's held-out documents as token batches. So SAELens's code
runs unmodified on our model, SAE and held-out documents.

Definitions, ours vs SAELens (identical unless stated):
- explained variance: ours = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² pooled over tokens, which is SAELens's
  ``explained_variance`` (``ExplainedVarianceCalculator``: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)), not its
  ``explained_variance_legacy`` (the per-token ratio against the batch mean, averaged).
- L0: mean over non-special tokens of #{i : z_i ≠ 0} in both.
- dead fraction: SAELens's evals report no dead fraction; we compare with the share of its
  ``feature_density`` equal to 0. (SAETrainer's ``dead_features`` is a different, training-time
  quantity: latents that have not fired for ``dead_feature_window`` steps.)
- MSE: ours = SAELens ``mse`` (Σ over dims, mean over tokens).
- CE score: same formula and token mask (SAE spliced at non-special positions, zero-ablation at all
  positions, loss at t counted when token t is not special).
- Tokens: SAELens runs fixed-length rows without an attention mask; we run documents right-padded with
  one. They agree when documents have equal length, so the check crops every held-out document to the
  shortest one's length and scores our functions on exactly the stored rows inside that crop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from bench.core.compat import added_forward_hooks
from bench.core.lm import _unwrap
from saes import metrics as M
from saes.score import ce_losses
from saes.store import ActivationStore


class _HeldoutTokens:
    """The slice of SAELens's ActivationsStore interface its eval functions use: ``get_batch_tokens``."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.i = batches, 0

    def get_batch_tokens(self, batch_size: int | None = None) -> torch.Tensor:
        out = self.batches[self.i % len(self.batches)]
        self.i += 1
        return out

    def reset_input_dataset(self) -> None:
        self.i = 0


@contextlib.contextmanager
def _proxy(model, tokenizer, hook_name: str) -> Iterator:
    """SAELens's HookedProxyLM around ``model``; its forward hooks are removed on exit."""
    from sae_lens.load_model import HookedProxyLM

    base = _unwrap(model)
    with added_forward_hooks(dict(base.named_modules())[hook_name]):
        yield HookedProxyLM(base, tokenizer, hook_names=[hook_name])


@torch.no_grad()
def compare_with_sae_lens(
    sae, model, tokenizer, store: ActivationStore, *, batch_docs: int = 8
) -> dict[str, tuple[float, float]]:
    """{metric: (ours, SAELens)} for explained_variance, mse, l0, dead_frac, the three CEs and ce_score.

    SAELens averages per-token CE in float32, we in float64; when zero-ablation barely changes the loss
    (random models) the CE score is a ratio of tiny differences and the two can differ visibly even
    though the three CEs agree to ~1e-6.
    """
    sae.cfg.metadata.hook_name = store.manifest["request"]["hook_name"]
    docs = store.heldout_docs()
    length = min(len(store.doc(d)) for d in docs)
    toks = torch.tensor([store.doc(d)[:length] for d in docs])
    batches = [toks[i : i + batch_docs] for i in range(0, len(docs), batch_docs)]
    ours = _ours(sae, model, store, docs, length, batch_docs)
    theirs = _theirs(sae, model, tokenizer, store, batches, batch_docs)
    return {k: (ours[k], float(theirs[k])) for k in ours}


def _ours(sae, model, store: ActivationStore, docs: list[int], length: int, batch_docs: int) -> dict[str, float]:
    """Our metrics on every stored row of ``docs`` inside the crop (SAELens counts repeated prefixes too)."""
    req = store.manifest["request"]
    rows = np.arange(store.n_train, store.acts.shape[0])
    rows = rows[np.isin(np.asarray(store.doc_index[rows]), docs) & (np.asarray(store.positions[rows]) < length)]
    x = store.rows(rows)
    x_hat = sae.decode(z := sae.encode(x))
    density = M.feature_density(z.float())
    clean, with_sae, zero, _ = ce_losses(
        model,
        store,
        sae,
        layer=req["layer"],
        hook=req["hook"],
        batch_size=batch_docs,
        crop=length,
        count_duplicates=True,
    )
    return dict(
        explained_variance=M.sae_explained_variance(x, x_hat),
        mse=M.sae_mse(x, x_hat),
        l0=M.sae_l0(density),
        dead_frac=M.sae_dead_frac(density),
        ce_clean=clean,
        ce_sae=with_sae,
        ce_zero_ablation=zero,
        ce_score=M.sae_ce_score(clean, with_sae, zero),
    )


def _theirs(sae, model, tokenizer, store: ActivationStore, batches: list, batch_docs: int) -> dict[str, float]:
    """SAELens's own ``sae_lens.evals`` functions on the same documents."""
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    special = store.manifest["special_ids"] or None
    common = dict(n_batches=len(batches), eval_batch_size_prompts=batch_docs, ignore_tokens=special)
    with _proxy(model, tokenizer, store.manifest["request"]["hook_name"]) as proxy:
        sv, feats = get_sparsity_and_variance_metrics(
            sae,
            proxy,
            _HeldoutTokens(batches),
            ActivationScaler(),
            compute_l2_norms=False,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
            model_kwargs={},
            **common,
        )
        rec = get_downstream_reconstruction_metrics(
            sae, proxy, _HeldoutTokens(batches), ActivationScaler(), compute_kl=False, compute_ce_loss=True, **common
        )
    dens = torch.tensor(feats["feature_density"])
    return dict(
        explained_variance=sv["explained_variance"],
        mse=sv["mse"],
        l0=sv["l0"],
        dead_frac=float((dens == 0).double().mean()),
        ce_clean=rec["ce_loss_without_sae"],
        ce_sae=rec["ce_loss_with_sae"],
        ce_zero_ablation=rec["ce_loss_with_ablation"],
        ce_score=rec["ce_loss_score"],
    )
