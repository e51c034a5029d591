"""Held-out integrity of an activation store (SPEC.md §5): split by item, count each activation once.

A causal LM's activation at token t is a function of the token prefix d[0..t] (same tokens at the
same positions → the same activation). So a held-out token whose whole prefix also occurs in a
training document is a token the SAE has already seen, and two held-out tokens with the same prefix
are one measurement counted twice. The store therefore:

1. **splits by item group** (``split_groups``): every text built from one prompt or item (prompt +
   chosen, prompt + rejected, its concept texts) carries the same group name and lands on one side;
2. **gives each stored token a role** (``token_roles``) from a prefix trie over the documents in
   processing order — train documents first: ``TRAIN`` (a training activation, first occurrence of
   its prefix), ``HELDOUT`` (a held-out activation whose prefix occurs nowhere in training and not
   earlier in the held-out split) or ``DUPLICATE`` (its prefix was seen before: an identical
   activation, stored only so that whole documents can be pooled, never trained on or scored).

``audit_store`` re-checks a finished store with an independent mechanism (hashes of the prefixes'
bytes, every position of every training document): it counts held-out tokens whose prefix of
``min_prefix`` or more tokens occurs in training (leaks) and held-out tokens sharing their prefix
with another held-out token (twins). Both must be 0; the acts stage records them.

Example::

    python -c "from saes.heldout import token_roles; import numpy as np; \
print(token_roles([[1, 2, 3], [1, 2, 4]], np.array([0, 1], np.uint8), [[True] * 3] * 2))"
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from bench.core.controls import control
from bench.core.errors import ConfigError

TRAIN, HELDOUT, DUPLICATE, NOT_STORED = 0, 1, 2, -1


def split_groups(groups: Sequence[str], heldout_frac: float, seed: int) -> np.ndarray:
    """uint8 per document, 1 = held-out: whole groups in a seeded order until ≥ ⌈frac · n⌉ documents.

    At least one group lands on each side; a single group is an error (nothing could be held out).
    """
    n = len(groups)
    names = list(dict.fromkeys(groups))
    if len(names) < 2:
        raise ConfigError(
            f"need at least 2 item groups to split into train and held-out documents, got "
            f"{len(names)} group(s) over {n} text(s)"
        )
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    want = min(n - 1, max(1, int(np.ceil(heldout_frac * n))))
    split = np.zeros(n, dtype=np.uint8)
    held, taken = 0, 0
    for k in np.random.default_rng(seed).permutation(len(names)):
        if held >= want or taken == len(names) - 1:
            break
        split[members[names[k]]] = 1
        held += len(members[names[k]])
        taken += 1
    return split


def token_roles(
    docs: Sequence[Sequence[int]], split: np.ndarray, keep: Sequence[Sequence[bool]], order: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Role of every position of every document (``NOT_STORED`` where ``keep`` is False).

    Documents are visited in ``order`` (default: by index), train documents before held-out ones;
    a prefix is identified exactly by its node in a trie of (parent node, token id) pairs.
    """
    order = list(range(len(docs))) if order is None else list(order)
    visit = [d for d in order if split[d] == 0] + [d for d in order if split[d] == 1]
    trie: dict[tuple[int, int], int] = {}
    seen: set[int] = set()
    roles: list[np.ndarray] = [np.full(len(ids), NOT_STORED, dtype=np.int8) for ids in docs]
    for d in visit:
        node, held = -1, split[d] == 1
        for i, t in enumerate(docs[d]):
            node = trie.setdefault((node, int(t)), len(trie))
            if not keep[d][i]:
                continue
            if node in seen:
                roles[d][i] = DUPLICATE
            else:
                seen.add(node)
                roles[d][i] = HELDOUT if held else TRAIN
    return roles


def _prefix_digests(ids: Sequence[int]) -> list[bytes]:
    h, out = hashlib.blake2b(digest_size=16), []
    for t in ids:
        h.update(int(t).to_bytes(4, "little", signed=True))
        out.append(h.copy().digest())
    return out


def audit_store(store, min_prefix: int = 4) -> dict[str, int]:
    """Count held-out rows whose prefix (≥ ``min_prefix`` tokens) occurs in any training document
    (``leaks``), shorter shared prefixes (``short_shared``), and held-out rows whose prefix another
    held-out row shares (``twins``). ``store`` is a ``saes.activations.ActivationStore``."""
    split = store.doc_split
    train_prefixes: set[bytes] = set()
    for d in np.flatnonzero(split == 0).tolist():
        train_prefixes.update(_prefix_digests(store.doc(d)))
    ho = store.heldout
    docs, pos = np.asarray(store.doc_index[ho]), np.asarray(store.positions[ho])
    digests: dict[int, list[bytes]] = {}
    seen: set[bytes] = set()
    leaks = short = twins = 0
    for d, p in zip(docs.tolist(), pos.tolist()):
        if d not in digests:
            digests[d] = _prefix_digests(store.doc(d))
        key = digests[d][p]
        if key in train_prefixes:
            leaks += p + 1 >= min_prefix
            short += p + 1 < min_prefix
        twins += key in seen
        seen.add(key)
    return {"heldout_tokens": int(len(docs)), "leaks": leaks, "short_shared": short, "twins": twins}


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
class _Docs:
    """The slice of ``ActivationStore`` that ``audit_store`` reads, over token lists and roles."""

    def __init__(self, docs: list[list[int]], split: np.ndarray, roles: list[np.ndarray]):
        self.doc_split, self._docs = split, docs
        rows = [(d, p) for d in range(len(docs)) for p in np.flatnonzero(roles[d] == HELDOUT).tolist()]
        self.doc_index = np.array([d for d, _ in rows], dtype=np.int64)
        self.positions = np.array([p for _, p in rows], dtype=np.int64)
        self.heldout = slice(0, len(rows))

    def doc(self, d: int) -> list[int]:
        return self._docs[d]


def _shared_prompts(ctx) -> tuple[list[list[int]], list[str]]:
    """40 items, each a 12-token prompt with 3 replies, all prompts opening with the same 6 tokens."""
    rng = ctx.rng(31)
    head = rng.integers(100, 200, 6).tolist()
    docs, groups = [], []
    for item in range(40):
        prompt = head + rng.integers(200, 9000, 6).tolist()
        for _ in range(3):
            docs.append(prompt + rng.integers(200, 9000, int(rng.integers(1, 8))).tolist())
            groups.append(f"item{item}")
    return docs, groups


def _audit(ctx, by_group: bool) -> dict[str, int]:
    """``audit_store`` of documents that share prompts, split by item with prefix roles or (the old store) by
    document with every token of a held-out document held out."""
    docs, groups = _shared_prompts(ctx)
    split = split_groups(groups if by_group else [str(i) for i in range(len(docs))], 0.25, ctx.seed)
    keep = [[True] * len(d) for d in docs]
    if by_group:
        roles = token_roles(docs, split, keep)
    else:
        roles = [np.full(len(d), HELDOUT if split[i] else TRAIN, dtype=np.int8) for i, d in enumerate(docs)]
    return audit_store(_Docs(docs, split, roles))


def _register_controls() -> None:

    for metric, key in (("acts_heldout_leaks", "leaks"), ("acts_heldout_twins", "twins")):
        control(
            metric, "negative", "shared prompts, split by item + prefix roles", expect="= 0", check=lambda v: v == 0
        )(lambda ctx, key=key: float(_audit(ctx, True)[key]))
        control(
            metric,
            "positive",
            "the same texts split by document, no roles: the audit finds them",
            expect="> 0",
            check=lambda v: v > 0,
        )(lambda ctx, key=key: float(_audit(ctx, False)[key]))


_register_controls()
