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

from bench.lm import _unwrap
from saes import metrics as M
from saes.activations import ActivationStore
from saes.score import ce_losses


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
    """SAELens's HookedProxyLM around ``model``; its forward hooks are removed on exit.

    HookedProxyLM registers its hooks for good and keeps no handles, so the hooks added to the hooked
    module during construction are found by diffing the module's (private) hook dict.
    """
    from sae_lens.load_model import HookedProxyLM

    base = _unwrap(model)
    module = dict(base.named_modules())[hook_name]
    before = set(module._forward_hooks)
    proxy = HookedProxyLM(base, tokenizer, hook_names=[hook_name])
    try:
        yield proxy
    finally:
        for key in set(module._forward_hooks) - before:
            del module._forward_hooks[key]


@torch.no_grad()
def compare_with_sae_lens(sae, model, tokenizer, store: ActivationStore, *, batch_docs: int = 8) -> dict[str, tuple[float, float]]:
    """{metric: (ours, SAELens)} for explained_variance, mse, l0, dead_frac, the three CEs and ce_score.

    SAELens averages per-token CE in float32, we in float64; when zero-ablation barely changes the loss
    (random models) the CE score is a ratio of tiny differences and the two can differ visibly even
    though the three CEs agree to ~1e-6.
    """
    from sae_lens.evals import (
        get_downstream_reconstruction_metrics,
        get_sparsity_and_variance_metrics,
    )
    from sae_lens.training.activation_scaler import ActivationScaler

    req = store.manifest["request"]
    hook_name = req["hook_name"]
    sae.cfg.metadata.hook_name = hook_name
    docs = store.heldout_docs()
    length = min(len(store.doc(d)) for d in docs)
    toks = torch.tensor([store.doc(d)[:length] for d in docs])
    batches = [toks[i:i + batch_docs] for i in range(0, len(docs), batch_docs)]
    special = store.manifest["special_ids"] or None

    # ours, on every stored row of those documents inside the crop (SAELens counts repeated prefixes too)
    ho = np.arange(store.n_train, store.acts.shape[0])
    rows = ho[np.isin(np.asarray(store.doc_index[ho]), docs) & (np.asarray(store.positions[ho]) < length)]
    x = store.rows(rows)
    z = sae.encode(x)
    x_hat = sae.decode(z)
    density = M.feature_density(z.float())
    clean, with_sae, zero, _ = ce_losses(model, store, sae, layer=req["layer"], hook=req["hook"],
                                         batch_size=batch_docs, crop=length, count_duplicates=True)
    ours = dict(explained_variance=M.sae_explained_variance(x, x_hat), mse=M.sae_mse(x, x_hat),
                l0=M.sae_l0(density), dead_frac=M.sae_dead_frac(density), ce_clean=clean, ce_sae=with_sae,
                ce_zero_ablation=zero, ce_score=M.sae_ce_score(clean, with_sae, zero))

    scaler = ActivationScaler()
    with _proxy(model, tokenizer, hook_name) as proxy:
        sv, feats = get_sparsity_and_variance_metrics(
            sae, proxy, _HeldoutTokens(batches), scaler, n_batches=len(batches), compute_l2_norms=False,
            compute_sparsity_metrics=True, compute_variance_metrics=True,
            compute_featurewise_density_statistics=True, eval_batch_size_prompts=batch_docs, model_kwargs={},
            ignore_tokens=special)
        rec = get_downstream_reconstruction_metrics(
            sae, proxy, _HeldoutTokens(batches), scaler, compute_kl=False, compute_ce_loss=True,
            n_batches=len(batches), eval_batch_size_prompts=batch_docs, ignore_tokens=special)
    dens = torch.tensor(feats["feature_density"])
    theirs = dict(explained_variance=sv["explained_variance"], mse=sv["mse"], l0=sv["l0"],
                  dead_frac=float((dens == 0).double().mean()), ce_clean=rec["ce_loss_without_sae"],
                  ce_sae=rec["ce_loss_with_sae"], ce_zero_ablation=rec["ce_loss_with_ablation"],
                  ce_score=rec["ce_loss_score"])
    return {k: (ours[k], float(theirs[k])) for k in ours}
