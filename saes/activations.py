"""Activation store: the hooked module's output on every token of a text set, on disk.

``collect_activations`` runs the model once over the tokenized texts, **stopping the forward pass
right after the hooked module** (a forward hook stores the output and raises a private exception, so
no layer above it is computed), and writes per-token activations into a preallocated ``.npy`` memmap
batch by batch. The train/held-out split is by *item group* (``saes.heldout.split_groups``: every text
made from one item on one side; without groups, by document), never by token, and every stored token
has a role (``saes.heldout.token_roles``): a training token, a held-out token whose prefix occurs
nowhere in training and only once in the held-out split, or a duplicate of an earlier prefix (the same
activation; stored so whole documents can be pooled, never trained on or scored). Padding is always
dropped; special tokens (BOS/EOS/chat markers) are dropped when ``drop_special_tokens``.

Store folder::

    manifest.json    what was collected: model, layer, hook(+module path), d_in, dtype, options, counts
    acts.npy         (n_tokens, d_in) float32, or bfloat16 bit patterns as int16; rows ordered train
                     tokens [0, n_train), held-out tokens [n_train, n_train + n_heldout), duplicates last
    token_ids.npy    (n_tokens,) int32 id of each stored token
    doc_index.npy    (n_tokens,) int32 document (index into the input texts) of each stored token
    positions.npy    (n_tokens,) int32 position of the token in its document
    doc_tokens.npy   (Σ doc lengths,) int32 every document's full token ids, specials kept
    doc_offsets.npy  (n_texts + 1,) int64 document d is doc_tokens[off[d]:off[d + 1]]
    doc_split.npy    (n_texts,) uint8 0 = train, 1 = held-out
    doc_group.npy    (n_texts,) int32 item group of each document (index into manifest["groups"] order)
    tokenizer/       the tokenizer (save_pretrained), for showing contexts without the model

Example::

    python -c "from bench.models import load_model; from saes.activations import collect_activations as c; \
m, t = load_model('tiny:llama'); print(c(m, t, [f'text {i}: the cat sat on the mat and looked at the dog' \
for i in range(64)], layer=1, hook='mlp.up_proj', out_dir='/tmp/st'))"
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.lm import StopForward, _unwrap, format_prompt, hook_module
from saes.heldout import DUPLICATE, HELDOUT, TRAIN, split_groups, token_roles

log = logging.getLogger(__name__)

STORE_VERSION = 2


class NonFiniteActivationsError(ValueError):
    """The hooked module produced NaN or inf activations."""


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``NonFiniteActivationsError`` naming ``what`` if ``x`` holds NaN or inf."""
    bad = ~torch.isfinite(x)
    if bad.any():
        raise NonFiniteActivationsError(
            f"{what}: {int(bad.sum())} of {x.numel()} values are NaN/inf (first at flat index "
            f"{int(bad.flatten().nonzero()[0])}); check the model's dtype (fp16 overflow?) and weights")


def _first_tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.no_grad()
def hooked_activations(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       layer: int, hook: str) -> torch.Tensor:
    """Output of ``hook`` in block ``layer`` (batch, seq, d_in); the forward stops right after it."""
    module = hook_module(model, layer, hook)
    box: dict[str, torch.Tensor] = {}

    def capture(_mod, _inp, out):
        box["out"] = _first_tensor(out)
        raise StopForward

    handle = module.register_forward_hook(capture)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in box:
        raise RuntimeError(f"the forward pass never reached {hook!r} of layer {layer}")
    return box["out"]


def module_path(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside the (PEFT-unwrapped) model, e.g. ``model.layers.15.mlp.up_proj``."""
    for name, mod in _unwrap(model).named_modules():
        if mod is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def tokenize_docs(tokenizer, texts: Sequence[str], *, max_length: int,
                  use_chat_template: bool) -> list[tuple[list[int], int]]:
    """(token ids, start of the text's own tokens) per text; at most ``max_length`` of the text's tokens.

    Plain: the tokenizer's ids with its special tokens (e.g. BOS), truncated. Chat template: the
    template's prefix (system turn, user header) followed by the text's tokens; the suffix after the
    user turn is left off. Only tokens from the start index on are stored, so the identical template
    prefix of every document never enters the store.
    """
    docs = []
    for text in texts:
        if not use_chat_template or not getattr(tokenizer, "chat_template", None):
            ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
            docs.append((list(ids), 0))
            continue
        formatted = format_prompt(tokenizer, text, True)
        at = formatted.rfind(text)
        if at < 0:
            raise ValueError(f"the chat template rewrites the text {text[:40]!r}; collect with use_chat_template=false")
        prefix = tokenizer(formatted[:at], add_special_tokens=False)["input_ids"]
        body = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        docs.append((list(prefix) + list(body), len(prefix)))
    return docs


def _request(model, hook_name, texts, groups, *, layer, hook, max_length, heldout_frac, seed, use_chat_template,
             drop_special_tokens, dtype) -> dict:
    h = hashlib.sha256()
    for t, g in zip(texts, groups):
        h.update(t.encode())
        h.update(b"\0")
        h.update(g.encode())
        h.update(b"\1")
    return dict(model=str(getattr(_unwrap(model).config, "name_or_path", type(model).__name__)), layer=layer,
                hook=hook, hook_name=hook_name, max_length=max_length, heldout_frac=heldout_frac, seed=seed,
                use_chat_template=use_chat_template, drop_special_tokens=drop_special_tokens, dtype=dtype,
                n_texts=len(texts), texts_sha256=h.hexdigest())


def _to_disk(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return x.float().cpu().numpy()


def _resolve(explicit, cfg, field: str, default):
    if explicit is not None:
        return explicit
    return getattr(cfg, field) if cfg is not None else default


@torch.no_grad()
def collect_activations(model, tokenizer, texts: list[str], *, layer: int, hook: str = "mlp.up_proj",
                        out_dir: Path, cfg=None, groups: Sequence[str] | None = None, max_length: int | None = None,
                        batch_size: int | None = None, heldout_frac: float | None = None, seed: int = 0,
                        use_chat_template: bool | None = None, drop_special_tokens: bool | None = None,
                        dtype: str | None = None, max_texts: int | None = None) -> Path:
    """Collect ``hook`` activations of block ``layer`` for every token of ``texts`` into ``out_dir``.

    ``groups`` names each text's item (texts of one item share a name and one side of the split);
    None makes every text its own group. Options left at None come from ``cfg`` (a
    ``saes.config.SAEConfig``: context_length, collect_batch_size, heldout_frac, use_chat_template,
    drop_special_tokens, store_dtype, max_texts) or else from the defaults 64, 16, 0.2, False, True,
    "float32", all texts. Returns ``out_dir``. An existing complete store made by the same request is
    reused after checking that ``model`` reproduces its first held-out document; any other existing
    store is an error. The manifest is written last, so a folder without one is an unfinished store.
    NaN/inf activations raise ``NonFiniteActivationsError``.
    """
    max_length = _resolve(max_length, cfg, "context_length", 64)
    batch_size = _resolve(batch_size, cfg, "collect_batch_size", 16)
    heldout_frac = _resolve(heldout_frac, cfg, "heldout_frac", 0.2)
    use_chat_template = _resolve(use_chat_template, cfg, "use_chat_template", False)
    drop_special_tokens = _resolve(drop_special_tokens, cfg, "drop_special_tokens", True)
    dtype = _resolve(dtype, cfg, "store_dtype", "float32")
    limit = _resolve(max_texts, cfg, "max_texts", None)
    groups = [str(i) for i in range(len(texts))] if groups is None else [str(g) for g in groups]
    if len(groups) != len(texts):
        raise ValueError(f"{len(groups)} groups for {len(texts)} texts; give one group name per text")
    texts, groups = list(texts)[:limit], groups[:limit]
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"store dtype {dtype!r} not supported; allowed: float32, bfloat16")
    out_dir = Path(out_dir)
    hook_name = module_path(model, hook_module(model, layer, hook))
    request = _request(model, hook_name, texts, groups, layer=layer, hook=hook, max_length=max_length,
                       heldout_frac=heldout_frac, seed=seed, use_chat_template=use_chat_template,
                       drop_special_tokens=drop_special_tokens, dtype=dtype)
    if (out_dir / "manifest.json").is_file():
        store = ActivationStore(out_dir)
        if store.manifest["request"] != request:
            raise FileExistsError(f"{out_dir} holds an activation store made by a different request; delete it "
                                  "or collect into another folder")
        verify_store(store, model)
        log.info("reusing activation store %s", out_dir)
        return out_dir

    docs = tokenize_docs(tokenizer, texts, max_length=max_length, use_chat_template=use_chat_template)
    split = split_groups(groups, heldout_frac, seed)
    special = set(tokenizer.all_special_ids) if drop_special_tokens else set()
    keep = [[i >= start and t not in special for i, t in enumerate(ids)] for ids, start in docs]
    # train documents first, then held-out ones; each split sorted by length to limit padding
    order = [d for s in (0, 1) for d in sorted(range(len(docs)), key=lambda d: len(docs[d][0]))
             if split[d] == s and any(keep[d])]
    roles = token_roles([ids for ids, _ in docs], split, keep, order)
    n_role = {r: sum(int((roles[d] == r).sum()) for d in order) for r in (TRAIN, HELDOUT, DUPLICATE)}
    if n_role[TRAIN] == 0 or n_role[HELDOUT] == 0:
        raise ValueError(f"no tokens left in the {'train' if n_role[TRAIN] == 0 else 'held-out'} split after "
                         f"dropping padding/special tokens and repeated prefixes ({len(texts)} texts); give more "
                         "or longer texts")
    out_dir.mkdir(parents=True, exist_ok=True)
    acts = _write_rows(model, tokenizer, docs, roles, order, n_role, out_dir, layer=layer, hook=hook,
                       hook_name=hook_name, batch_size=batch_size, dtype=dtype)
    names = list(dict.fromkeys(groups))
    manifest = dict(version=STORE_VERSION, request=request, d_in=int(acts.shape[1]), n_tokens=sum(n_role.values()),
                    n_train_tokens=n_role[TRAIN], n_heldout_tokens=n_role[HELDOUT],
                    n_duplicate_tokens=n_role[DUPLICATE],
                    n_train_docs=sum(1 for d in order if split[d] == 0),
                    n_heldout_docs=sum(1 for d in order if split[d] == 1),
                    n_groups=len(names), n_heldout_groups=len({groups[d] for d in range(len(docs)) if split[d]}),
                    n_docs_without_tokens=len(docs) - len(order), special_ids=sorted(special),
                    content_start=[start for _, start in docs], pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(out_dir / "tokenizer")           # so the store can be shown on its own
    index = {g: i for i, g in enumerate(names)}
    np.save(out_dir / "doc_group.npy", np.array([index[g] for g in groups], dtype=np.int32))
    _write_docs_and_manifest(out_dir, docs, split, manifest)
    return out_dir


def _write_docs_and_manifest(out_dir: Path, docs: list[tuple[list[int], int]], split: np.ndarray,
                             manifest: dict) -> None:
    """Document token arrays, then the manifest (atomically, last: its presence marks a complete store)."""
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(ids) for ids, _ in docs])
    np.save(out_dir / "doc_tokens.npy", np.array([t for ids, _ in docs for t in ids], dtype=np.int32))
    np.save(out_dir / "doc_offsets.npy", offsets)
    np.save(out_dir / "doc_split.npy", split)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=out_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, out_dir / "manifest.json")


def _destinations(roles: list[np.ndarray], order: list[int], n_role: dict[int, int]) -> list[np.ndarray]:
    """Row of each stored position: train rows first, then held-out rows, then duplicates, in ``order``."""
    nxt = {TRAIN: 0, HELDOUT: n_role[TRAIN], DUPLICATE: n_role[TRAIN] + n_role[HELDOUT]}
    dest = [np.full(len(r), -1, dtype=np.int64) for r in roles]
    for d in order:
        for i, r in enumerate(roles[d].tolist()):
            if r >= 0:
                dest[d][i] = nxt[r]
                nxt[r] += 1
    return dest


def _write_rows(model, tokenizer, docs, roles, order, n_role, out_dir: Path, *, layer, hook, hook_name,
                batch_size, dtype) -> np.ndarray:
    """Forward ``order``'s documents in batches (right-padded) and write every stored row to its place."""
    n_total = sum(n_role.values())
    dest = _destinations(roles, order, n_role)
    meta = {name: np.lib.format.open_memmap(out_dir / f"{name}.npy", mode="w+", dtype=np.int32, shape=(n_total,))
            for name in ("token_ids", "doc_index", "positions")}
    acts = None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(docs[d][0]) for d in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, d in enumerate(batch):
                ids[i, :len(docs[d][0])] = torch.tensor(docs[d][0])
                mask[i, :len(docs[d][0])] = 1
            out = hooked_activations(model, ids.to(device), mask.to(device), layer=layer, hook=hook)
            for i, d in enumerate(batch):
                pos = np.flatnonzero(dest[d] >= 0)
                rows = out[i, torch.from_numpy(pos).to(out.device)]
                check_finite(rows, f"activations of {hook_name} (text {d})")
                if acts is None:
                    acts = np.lib.format.open_memmap(out_dir / "acts.npy", mode="w+",
                                                     dtype=np.float32 if dtype == "float32" else np.int16,
                                                     shape=(n_total, rows.shape[-1]))
                acts[dest[d][pos]] = _to_disk(rows, dtype)
                meta["token_ids"][dest[d][pos]] = np.asarray(docs[d][0], dtype=np.int32)[pos]
                meta["doc_index"][dest[d][pos]] = d
                meta["positions"][dest[d][pos]] = pos
    finally:
        model.train(was_training)
    acts.flush()
    for m in meta.values():
        m.flush()
    return acts


@dataclass(frozen=True)
class ActivationStore:
    """Read-only view of a store folder written by ``collect_activations``."""

    path: Path

    def __post_init__(self):
        if not (Path(self.path) / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.path} is not an activation store (no manifest.json); "
                                    "make one with saes.activations.collect_activations")

    @cached_property
    def manifest(self) -> dict:
        return json.loads((Path(self.path) / "manifest.json").read_text())

    def _load(self, name: str) -> np.ndarray:
        return np.load(Path(self.path) / f"{name}.npy", mmap_mode="r")

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
        return np.load(Path(self.path) / "doc_split.npy")

    @cached_property
    def _doc_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(Path(self.path) / "doc_tokens.npy"), np.load(Path(self.path) / "doc_offsets.npy")

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
        return toks[off[d]:off[d + 1]].tolist()

    def heldout_docs(self) -> list[int]:
        """Held-out documents with at least one held-out (non-duplicate) row, in index order."""
        return sorted(set(np.asarray(self.doc_index[self.heldout]).tolist()))

    def context(self, row: int, n_tokens: int) -> list[int]:
        """Token ids of the ``n_tokens`` window of the document ending at stored row ``row``."""
        d, p = int(self.doc_index[row]), int(self.positions[row])
        return self.doc(d)[max(0, p - n_tokens + 1):p + 1]

    def train_batches(self, batch_size: int, *, seed: int, device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
        """Endless shuffled batches of train-split activations (reshuffled every epoch, seeded)."""
        rng = np.random.default_rng(seed)
        n = self.n_train
        if n < batch_size:
            raise ValueError(f"the store has {n} train tokens, fewer than one batch of {batch_size}; "
                             "collect more texts or lower sae.batch_size")
        data = self.rows(slice(0, n)) if n * self.d_in * 4 <= 2 ** 31 else None   # ≤ 2 GiB: keep in memory
        while True:
            perm = rng.permutation(n)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = perm[start:start + batch_size]
                yield (data[torch.from_numpy(idx)] if data is not None else self.rows(np.sort(idx))).to(device)


def verify_store(store: ActivationStore, model, *, rtol: float = 2e-2) -> None:
    """Raise if ``model`` does not reproduce the stored activations of the first held-out document."""
    req = store.manifest["request"]
    d = store.heldout_docs()[0]
    ids = torch.tensor([store.doc(d)])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = hooked_activations(model, ids.to(device), torch.ones_like(ids).to(device), layer=req["layer"],
                                 hook=req["hook"])[0].float().cpu()
    finally:
        model.train(was_training)
    rows = np.flatnonzero(np.asarray(store.doc_index[store.heldout]) == d) + store.n_train
    stored = store.rows(rows)
    fresh = out[torch.from_numpy(np.asarray(store.positions[rows]).astype(np.int64))]
    err = float((fresh - stored).norm() / stored.norm().clamp_min(1e-12))
    if err > rtol:
        raise ValueError(f"the model does not reproduce the activations in {store.path} (relative error "
                         f"{err:.3g} > {rtol}); the store was collected from another model — collect a new one")
