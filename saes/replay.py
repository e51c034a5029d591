"""Another model's activations at the same stored tokens as a base store: paired rows for model diffing.

The base SAE is trained on the base model's activation store of the generic corpus (``saes.corpus``).
To compare an aligned model with the base one token by token, ``replay_rows`` runs the aligned model
over the documents of chosen store rows and keeps its hooked activation at exactly those (document,
position) pairs: row i of the result and row ``rows[i]`` of the base store are the same token read by
two models. ``pick_rows`` chooses the rows: whole documents of one split (train or held-out) in a seeded
order until a token budget is reached, each document's rows of its own role (training tokens, or held-out
tokens never seen in training; duplicates never).

Folder written by ``replay_rows``::

    manifest.json   base store path and request, hook, layer, counts
    acts.npy        (n_rows, d_in) float32 activations of the replaying model
    rows.npy        (n_rows,) int64 the base store's row of each

Example::

    python -c "from saes.replay import pick_rows; from saes.store import ActivationStore; \
print(pick_rows(ActivationStore('/tmp/st'), 'heldout', 100, seed=0)[:5])"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.core.errors import ConfigError, StoreError, check_finite
from bench.core.hooks import hooked_activations
from bench.core.io import load_npy, read_json, write_text
from saes.store import ActivationStore

Split = Literal["train", "heldout"]


def _split_rows(store: ActivationStore, split: Split) -> slice:
    return slice(0, store.n_train) if split == "train" else store.heldout


def pick_rows(store: ActivationStore, split: Split, n_tokens: int, *, seed: int) -> np.ndarray:
    """Sorted store rows of ``split``: every row of whole documents, documents in a seeded order, until at
    least ``n_tokens`` rows (or the split runs out)."""
    sl = _split_rows(store, split)
    docs = np.asarray(store.doc_index[sl])
    order = np.argsort(docs, kind="stable")
    ids, starts = np.unique(docs[order], return_index=True)
    by_doc = np.split(order + sl.start, starts[1:])
    picked: list[np.ndarray] = []
    total = 0
    for k in np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(len(ids)):
        if total >= n_tokens:
            break
        picked.append(by_doc[k])
        total += len(by_doc[k])
    if not picked:
        raise ConfigError(f"the store {store.path} has no {split} tokens to replay")
    return np.sort(np.concatenate(picked)).astype(np.int64)


@torch.no_grad()
def replay_rows(model, store: ActivationStore, rows: np.ndarray, out_dir: Path, *, batch_size: int = 16) -> Path:
    """Write ``model``'s activations at the store's ``rows`` (same hook and layer) into ``out_dir``."""
    req = store.manifest["request"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    doc_of, pos_of = np.asarray(store.doc_index[rows]), np.asarray(store.positions[rows]).astype(np.int64)
    docs = sorted(set(doc_of.tolist()), key=lambda d: len(store.doc(d)))  # less padding
    out = np.lib.format.open_memmap(
        Path(out_dir) / "acts.npy", mode="w+", dtype=np.float32, shape=(len(rows), store.d_in)
    )
    device = next(model.parameters()).device
    pad = store.manifest["pad_token_id"]
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(docs), batch_size):
            batch = docs[s : s + batch_size]
            need = {d: np.flatnonzero(doc_of == d) for d in batch}
            toks = [store.doc(d)[: int(pos_of[need[d]].max()) + 1] for d in batch]
            width = max(map(len, toks))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for i, t in enumerate(toks):
                ids[i, : len(t)], att[i, : len(t)] = torch.tensor(t), 1
            acts = hooked_activations(
                model, ids.to(device), att.to(device), layer=req["layer"], hook=req["hook"]
            ).float()
            check_finite(acts, f"replayed activations of {req['hook']} (layer {req['layer']})")
            for i, d in enumerate(batch):
                out[need[d]] = acts[i, torch.from_numpy(pos_of[need[d]]).to(acts.device)].cpu().numpy()
    finally:
        model.train(was_training)
    out.flush()
    np.save(Path(out_dir) / "rows.npy", np.asarray(rows, dtype=np.int64))
    manifest = {"store": str(Path(store.path).resolve()), "request": req, "n_rows": len(rows), "d_in": store.d_in}
    write_text(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2))
    return Path(out_dir)


def copy_rows(store: ActivationStore, rows: np.ndarray, out_dir: Path) -> Path:
    """The base model's own rows, read from its store (what ``replay_rows`` of the base model computes, exactly)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    np.save(Path(out_dir) / "acts.npy", store.rows(rows).numpy())
    np.save(Path(out_dir) / "rows.npy", np.asarray(rows, dtype=np.int64))
    manifest = {
        "store": str(Path(store.path).resolve()),
        "request": store.manifest["request"],
        "n_rows": len(rows),
        "d_in": store.d_in,
    }
    write_text(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2))
    return Path(out_dir)


@dataclass(frozen=True)
class ReplayedRows:
    """Read-only view of a ``replay_rows`` folder."""

    path: Path

    def __post_init__(self):
        if not (Path(self.path) / "manifest.json").is_file():
            raise StoreError(f"{self.path} holds no replayed rows (no manifest.json)")

    @cached_property
    def rows(self) -> np.ndarray:
        return load_npy(Path(self.path) / "rows.npy")

    @cached_property
    def manifest(self) -> dict:
        return read_json(Path(self.path) / "manifest.json")

    def acts(self, which: np.ndarray | None = None) -> torch.Tensor:
        """Float32 activations (of the rows at positions ``which`` of ``rows``, default all)."""
        a = load_npy(Path(self.path) / "acts.npy", mmap=True)
        return torch.from_numpy(np.array(a if which is None else a[which], copy=True))

    def positions_of(self, store_rows: np.ndarray) -> np.ndarray:
        """Where each of ``store_rows`` sits in ``rows`` (all must be present)."""
        at = np.searchsorted(self.rows, store_rows)
        if (at >= len(self.rows)).any() or (self.rows[np.minimum(at, len(self.rows) - 1)] != store_rows).any():
            raise StoreError(f"{self.path} lacks some of the requested store rows")
        return at
