"""k-sparse probing of SAE latents on a task's concept labels (SAEBench style, SPEC.md §5).

Latents are mean-pooled over each concept text's tokens (``pooled_latents``: from the activation store
when it holds the text, else by a forward to the hook), then ``probe_scores`` fits the top-k latents on a
train split and reports test accuracy; with ``groups`` the split keeps each item's texts on one side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from bench.core.controls import control
from bench.core.errors import ConfigError, check_finite
from bench.core.hooks import hooked_activations
from saes import metrics as M
from saes.activations import ActivationStore, tokenize_docs

log = logging.getLogger(__name__)


@torch.no_grad()
def pooled_latents(
    model,
    tokenizer,
    sae,
    texts: Sequence[str],
    *,
    layer: int,
    hook: str,
    max_length: int,
    batch_size: int,
    use_chat_template: bool,
    special_ids: Sequence[int],
    store: ActivationStore | None = None,
) -> torch.Tensor:
    """(n_texts, d_sae) mean of SAE latents over each text's stored-kind tokens (SAEBench mean pooling).

    A text that ``store`` already holds as a document (the same token ids from the same content start,
    e.g. a task's concept texts, which are part of its SAE token set) is pooled from the stored
    activations: the same tokens and activations, without running ``model`` again. The other texts are
    run through ``model`` up to the hook. ``store`` must be collected from ``model`` at ``layer``/``hook``.
    """
    docs = tokenize_docs(tokenizer, texts, max_length=max_length, use_chat_template=use_chat_template)
    out = torch.zeros(len(docs), sae.cfg.d_sae)
    in_store = _stored_docs(store, docs) if store is not None else {}
    if in_store:
        assert store is not None  # in_store is {} without a store
        out[list(in_store)] = _pooled_from_store(store, sae, list(in_store.values()))
    todo = [i for i in range(len(docs)) if i not in in_store]
    order = sorted(todo, key=lambda i: len(docs[i][0]))  # batches of similar length
    device = next(model.parameters()).device
    special = set(special_ids)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            batch = [docs[i] for i in rows]
            width = max(1, max(len(ids) for ids, _ in batch))
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            keep = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, (t, start) in enumerate(batch):
                ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
                att[i, : len(t)] = 1
                keep[i, : len(t)] = torch.tensor([j >= start and v not in special for j, v in enumerate(t)])
            acts = hooked_activations(model, ids.to(device), att.to(device), layer=layer, hook=hook).float()
            check_finite(acts, f"activations of {hook} on concept texts")
            z = sae.encode(acts.to(sae.W_dec.device)).float().cpu()
            w = keep.float()[..., None]
            out[rows] = (z * w).sum(1) / w.sum(1).clamp_min(1.0)
    finally:
        model.train(was_training)
    return out


def check_probe_texts(
    tokenizer, texts: Sequence[str], labels: Sequence[int], *, max_length: int, use_chat_template: bool
) -> None:
    """Raise if truncation to ``max_length`` tokens leaves two concept texts with different labels the
    same tokens: their pooled latents would be equal, and the probe could not tell their labels apart."""
    seen: dict[tuple[int, ...], int] = {}
    clashes = 0
    for (ids, _), label in zip(
        tokenize_docs(tokenizer, texts, max_length=max_length, use_chat_template=use_chat_template), labels
    ):
        clashes += seen.setdefault(tuple(ids), label) != label
    if clashes:
        longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
        raise ConfigError(
            f"{clashes} concept texts have the same first {max_length} tokens as a text with the other "
            f"label, so the probe cannot separate them; raise sae.context_length (or "
            f"sae.eval.probe_max_length) to {longest}, the longest concept text's tokens"
        )


def _stored_docs(store: ActivationStore, docs: list[tuple[list[int], int]]) -> dict[int, int]:
    """text index → store document holding exactly its tokens (same ids, same content start)."""
    starts = store.manifest["content_start"]
    index = {(tuple(store.doc(d)), starts[d]): d for d in range(len(starts))}
    return {i: index[(tuple(ids), start)] for i, (ids, start) in enumerate(docs) if (tuple(ids), start) in index}


@torch.no_grad()
def _pooled_from_store(store: ActivationStore, sae, doc_ids: list[int], chunk: int = 4096) -> torch.Tensor:
    """(len(doc_ids), d_sae) mean SAE latent over each store document's rows (0 for a document without
    rows); a document listed twice gets the same row twice."""
    unique, back = np.unique(np.asarray(doc_ids, dtype=np.int64), return_inverse=True)
    slot = np.full(len(store.manifest["content_start"]), -1, dtype=np.int64)
    slot[unique] = np.arange(len(unique))
    doc_of_row = np.asarray(store.doc_index)
    rows = np.flatnonzero(slot[doc_of_row] >= 0)
    owner = torch.from_numpy(slot[doc_of_row[rows]])
    sums = torch.zeros(len(unique), sae.cfg.d_sae)
    for s in range(0, len(rows), chunk):
        x = store.rows(rows[s : s + chunk])
        check_finite(x, f"stored activations in {store.path}")
        z = sae.encode(x.to(sae.W_dec.device))
        sums.index_add_(0, owner[s : s + chunk], (z.to_dense() if z.is_sparse else z).float().cpu())
    counts = torch.bincount(owner, minlength=len(unique)).clamp_min(1)
    return (sums / counts[:, None])[torch.from_numpy(back)]


def probe_scores(
    features: torch.Tensor, labels: Sequence[int], *, test_frac: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[float, float]:
    """(top-1, top-5) k-sparse probe accuracy; NaN (with a warning) without enough texts of both labels.

    The test split is ``test_frac`` of the texts, stratified by label and seeded. With ``groups`` it
    is whole groups instead: the first fold of a seeded ``StratifiedGroupKFold`` with
    round(1 / test_frac) folds (test_frac 0.3 → a third of the groups).
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=2) if y.size else np.zeros(2, dtype=int)
    if y.size == 0 or set(np.unique(y)) - {0, 1} or counts.min() < 2:
        log.warning(
            "SAE probe skipped: need binary concept labels with ≥ 2 texts per class, got counts %s", counts.tolist()
        )
        return math.nan, math.nan
    if groups is None:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_frac, stratify=y, random_state=seed)
    else:
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} concept groups for {len(y)} concept texts")
        folds = StratifiedGroupKFold(n_splits=max(2, round(1 / test_frac)), shuffle=True, random_state=seed)
        tr, te = next(folds.split(np.zeros(len(y)), y, groups))
    lab, tr_t, te_t = torch.from_numpy(y), torch.from_numpy(tr), torch.from_numpy(te)
    return cast("tuple[float, float]", tuple(M.k_sparse_probe_accuracy(features, lab, k, tr_t, te_t) for k in (1, 5)))


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _features(ctx, n: int = 200, d: int = 64) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    rng = ctx.rng(21)
    feats = torch.from_numpy(rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.2)).float()
    labels = np.tile([0, 1], n // 2)
    groups = [f"item{i // 2}" for i in range(n)]  # each item holds one text of each label
    return feats, labels, groups


def _shuffled(ctx, which: int = 0) -> float:
    """Mean top-1 (``which`` 0) or top-5 (1) accuracy over 20 splits with the labels permuted (both computed
    once per control run, ``ctx.cache``)."""
    if "probe_shuffled" not in ctx.cache:
        feats, labels, groups = _features(ctx)
        rng = ctx.rng(22)
        accs = [
            probe_scores(feats, rng.permutation(labels).tolist(), test_frac=0.3, seed=s, groups=groups)
            for s in range(20)
        ]
        ctx.cache["probe_shuffled"] = np.mean(accs, axis=0)
    return float(ctx.cache["probe_shuffled"][which])


def _planted(ctx, which: int = 0) -> float:
    feats, labels, groups = _features(ctx)
    feats[:, 5] = torch.from_numpy(labels * (1.0 + ctx.rng(23).random(len(labels)))).float()
    return probe_scores(feats, labels.tolist(), test_frac=0.3, seed=0, groups=groups)[which]


def _register_controls() -> None:

    control(
        "sae_probe_top1",
        "negative",
        "labels shuffled (mean of 20 splits)",
        expect="0.4–0.6 (chance 0.5)",
        check=lambda v: 0.4 <= v <= 0.6,
    )(_shuffled)
    control(
        "sae_probe_top1", "positive", "one latent active exactly on label 1", expect="≥ 0.95", check=lambda v: v >= 0.95
    )(_planted)
    control(
        "sae_probe_top5",
        "negative",
        "labels shuffled (mean of 20 splits)",
        expect="0.4–0.6 (chance 0.5)",
        check=lambda v: 0.4 <= v <= 0.6,
    )(lambda ctx: _shuffled(ctx, which=1))
    control(
        "sae_probe_top5", "positive", "one latent active exactly on label 1", expect="≥ 0.95", check=lambda v: v >= 0.95
    )(lambda ctx: _planted(ctx, which=1))


_register_controls()
