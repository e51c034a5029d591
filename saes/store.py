"""Read-only view of an activation store folder (written by ``saes.activations.collect_activations``).

Rows are ordered train tokens [0, n_train), held-out tokens [n_train, n_train + n_heldout), duplicates
last (``saes.heldout``); ``doc`` and ``context`` rebuild a token's document and context window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import ConfigError, StoreError
from bench.core.hooks import hooked_activations
from bench.core.io import load_npy, read_json

STORE_VERSION = 2


@dataclass(frozen=True)
class ActivationStore:
    """Read-only view of a store folder written by ``collect_activations``."""

    path: Path

    def __post_init__(self):
        if not (Path(self.path) / "manifest.json").is_file():
            raise StoreError(
                f"{self.path} is not an activation store (no manifest.json); "
                "make one with saes.activations.collect_activations"
            )

    @cached_property
    def manifest(self) -> dict:
        return read_json(Path(self.path) / "manifest.json")

    def _load(self, name: str) -> np.ndarray:
        return load_npy(Path(self.path) / f"{name}.npy", mmap=True)

    @cached_property
    def acts(self) -> np.ndarray:
        return self._load("acts")

    @cached_property
    def token_ids(self) -> np.ndarray:
        return self._load("token_ids")

    @cached_property
    def doc_index(self) -> np.ndarray:
        return self._load("doc_index")

    @cached_property
    def positions(self) -> np.ndarray:
        return self._load("positions")

    @cached_property
    def doc_split(self) -> np.ndarray:
        return load_npy(Path(self.path) / "doc_split.npy")

    @cached_property
    def _doc_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        return load_npy(Path(self.path) / "doc_tokens.npy"), load_npy(Path(self.path) / "doc_offsets.npy")

    @property
    def d_in(self) -> int:
        return self.manifest["d_in"]

    @property
    def n_train(self) -> int:
        return self.manifest["n_train_tokens"]

    @property
    def n_heldout(self) -> int:
        return self.manifest["n_heldout_tokens"]

    @property
    def heldout(self) -> slice:
        """Rows of the held-out tokens (they follow the train tokens)."""
        return slice(self.n_train, self.n_train + self.n_heldout)

    def rows(self, idx: np.ndarray | slice) -> torch.Tensor:
        """Activations of the given rows as float32 (bf16 stores are widened)."""
        t = torch.from_numpy(np.array(self.acts[idx], copy=True))
        return t.view(torch.bfloat16).float() if self.manifest["request"]["dtype"] == "bfloat16" else t

    def heldout_acts(self, max_tokens: int | None = None) -> torch.Tensor:
        sl = self.heldout
        if max_tokens is not None:
            sl = slice(sl.start, min(sl.stop, sl.start + max_tokens))
        return self.rows(sl)

    def doc(self, d: int) -> list[int]:
        """Full token ids of document ``d`` (specials kept)."""
        toks, off = self._doc_tokens
        return toks[off[d] : off[d + 1]].tolist()

    def heldout_docs(self) -> list[int]:
        """Held-out documents with at least one held-out (non-duplicate) row, in index order."""
        return sorted(set(np.asarray(self.doc_index[self.heldout]).tolist()))

    def context(self, row: int, n_tokens: int) -> list[int]:
        """Token ids of the ``n_tokens`` window of the document ending at stored row ``row``."""
        d, p = int(self.doc_index[row]), int(self.positions[row])
        return self.doc(d)[max(0, p - n_tokens + 1) : p + 1]

    def train_batches(
        self, batch_size: int, *, seed: int, device: str | torch.device = "cpu"
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled batches of train-split activations (reshuffled every epoch, seeded)."""
        read = self.train_reader(batch_size)
        for idx in train_order(self.n_train, batch_size, seed):
            yield read(idx).to(device)

    def train_reader(self, batch_size: int) -> Callable[[np.ndarray], torch.Tensor]:
        """idx -> (len(idx), d_in) float32 rows of the train split: in idx order from memory when the split
        takes ≤ 2 GiB, else read from the memmap in sorted order (the same rows; order within a batch does not
        matter to training). Raises if the split holds fewer than ``batch_size``."""
        n = self.n_train
        if n < batch_size:
            raise ConfigError(
                f"the store has {n} train tokens, fewer than one batch of {batch_size}; "
                "collect more texts or lower sae.batch_size"
            )
        if n * self.d_in * 4 <= 2**31:
            data = self.rows(slice(0, n))
            return lambda idx: data[torch.from_numpy(idx)]
        return lambda idx: self.rows(np.sort(idx))  # a memmap reads sorted rows; order within a batch is moot


def train_order(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless row-index batches of ``batch_size`` over [0, n): a fresh ``numpy.random.default_rng(seed)``
    permutation every epoch, its last partial batch dropped."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def verify_store(store: ActivationStore, model, *, rtol: float = 2e-2) -> None:
    """Raise if ``model`` does not reproduce the stored activations of the first held-out document."""
    req = store.manifest["request"]
    d = store.heldout_docs()[0]
    ids = torch.tensor([store.doc(d)])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = (
            hooked_activations(
                model, ids.to(device), torch.ones_like(ids).to(device), layer=req["layer"], hook=req["hook"]
            )[0]
            .float()
            .cpu()
        )
    finally:
        model.train(was_training)
    rows = np.flatnonzero(np.asarray(store.doc_index[store.heldout]) == d) + store.n_train
    stored = store.rows(rows)
    fresh = out[torch.from_numpy(np.asarray(store.positions[rows]).astype(np.int64))]
    err = float((fresh - stored).norm() / stored.norm().clamp_min(1e-12))
    if err > rtol:
        raise StoreError(
            f"the model does not reproduce the activations in {store.path} (relative error "
            f"{err:.3g} > {rtol}); the store was collected from another model — collect a new one"
        )
