"""Activation store: the hooked module's output on every token of a text set, on disk.

``collect_activations`` runs the model once over the tokenized texts, **stopping the forward pass
right after the hooked module** (a forward hook stores the output and raises a private exception, so
no layer above it is computed), and writes per-token activations into a preallocated ``.npy`` memmap
batch by batch. ``collect_sites`` does the same for several (layer, hook) sites in one forward pass
(one store per site, every store with the same rows). The train/held-out split is by *item group*
(``saes.heldout.split_groups``: every text made from one item on one side; without groups, by document),
never by token, and every stored token
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.core.errors import ConfigError, StoreError, check_finite
from bench.core.hooks import Site, hooked_sites
from bench.core.io import write_text
from bench.core.lm import _unwrap, format_prompt, hook_module
from saes.heldout import DUPLICATE, HELDOUT, TRAIN, split_groups, token_roles
from saes.store import STORE_VERSION, ActivationStore, verify_store

log = logging.getLogger(__name__)


def module_path(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside the (PEFT-unwrapped) model, e.g. ``model.layers.15.mlp.up_proj``."""
    for name, mod in _unwrap(model).named_modules():
        if mod is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def tokenize_docs(
    tokenizer, texts: Sequence[str], *, max_length: int, use_chat_template: bool
) -> list[tuple[list[int], int]]:
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
            raise ConfigError(
                f"the chat template rewrites the text {text[:40]!r}; collect with use_chat_template=false"
            )
        prefix = tokenizer(formatted[:at], add_special_tokens=False)["input_ids"]
        body = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        docs.append((list(prefix) + list(body), len(prefix)))
    return docs


@dataclass(frozen=True)
class StoreOptions:
    """How texts are collected: tokens per text, texts per forward, held-out share, chat template, special
    tokens, on-disk dtype, text cap (``SAEConfig`` fields context_length, collect_batch_size, heldout_frac,
    use_chat_template, drop_special_tokens, store_dtype, max_texts)."""

    max_length: int = 64
    batch_size: int = 16
    heldout_frac: float = 0.2
    use_chat_template: bool = False
    drop_special_tokens: bool = True
    dtype: str = "float32"
    max_texts: int | None = None

    @classmethod
    def of(cls, cfg) -> StoreOptions:
        if cfg is None:
            return cls()
        return cls(
            cfg.context_length,
            cfg.collect_batch_size,
            cfg.heldout_frac,
            cfg.use_chat_template,
            cfg.drop_special_tokens,
            cfg.store_dtype,
            cfg.max_texts,
        )


def _request(model, hook_name: str, texts, groups, layer: int, hook: str, seed: int, o: StoreOptions) -> dict:
    """What a store was collected from and how (compared on reuse)."""
    h = hashlib.sha256()
    for t, g in zip(texts, groups):
        h.update(t.encode() + b"\0" + g.encode() + b"\1")
    name = str(getattr(_unwrap(model).config, "name_or_path", type(model).__name__))
    return dict(
        model=name,
        layer=layer,
        hook=hook,
        hook_name=hook_name,
        max_length=o.max_length,
        heldout_frac=o.heldout_frac,
        seed=seed,
        use_chat_template=o.use_chat_template,
        drop_special_tokens=o.drop_special_tokens,
        dtype=o.dtype,
        n_texts=len(texts),
        texts_sha256=h.hexdigest(),
    )


def _to_disk(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return x.float().cpu().numpy()


@dataclass
class _Layout:
    """Where every stored token goes: documents, split, roles, visiting order and counts per role."""

    docs: list[tuple[list[int], int]]
    split: np.ndarray
    roles: list[np.ndarray]
    order: list[int]
    n_role: dict[int, int]
    special: set[int]


def _layout(tokenizer, texts, groups, seed: int, o: StoreOptions) -> _Layout:
    docs = tokenize_docs(tokenizer, texts, max_length=o.max_length, use_chat_template=o.use_chat_template)
    split = split_groups(groups, o.heldout_frac, seed)
    special = set(tokenizer.all_special_ids) if o.drop_special_tokens else set()
    keep = [[i >= start and t not in special for i, t in enumerate(ids)] for ids, start in docs]
    by_length = sorted(range(len(docs)), key=lambda d: len(docs[d][0]))  # less padding per batch
    order = [d for s in (0, 1) for d in by_length if split[d] == s and any(keep[d])]  # train documents first
    roles = token_roles([ids for ids, _ in docs], split, keep, order)
    n_role = {r: sum(int((roles[d] == r).sum()) for d in order) for r in (TRAIN, HELDOUT, DUPLICATE)}
    if n_role[TRAIN] == 0 or n_role[HELDOUT] == 0:
        raise ConfigError(
            f"no tokens left in the {'train' if n_role[TRAIN] == 0 else 'held-out'} split after "
            f"dropping padding/special tokens and repeated prefixes ({len(texts)} texts); give more "
            "or longer texts"
        )
    return _Layout(docs, split, roles, order, n_role, special)


def _manifest(request: dict, lay: _Layout, groups: list[str], d_in: int, tokenizer) -> dict:
    s, order = lay.split, lay.order
    return dict(
        version=STORE_VERSION,
        request=request,
        d_in=d_in,
        n_tokens=sum(lay.n_role.values()),
        n_train_tokens=lay.n_role[TRAIN],
        n_heldout_tokens=lay.n_role[HELDOUT],
        n_duplicate_tokens=lay.n_role[DUPLICATE],
        n_train_docs=sum(1 for d in order if s[d] == 0),
        n_heldout_docs=sum(1 for d in order if s[d] == 1),
        n_groups=len(set(groups)),
        n_heldout_groups=len({groups[d] for d in range(len(lay.docs)) if s[d]}),
        n_docs_without_tokens=len(lay.docs) - len(order),
        special_ids=sorted(lay.special),
        content_start=[start for _, start in lay.docs],
        pad_token_id=tokenizer.pad_token_id,
    )


def collect_activations(
    model,
    tokenizer,
    texts: list[str],
    *,
    layer: int,
    out_dir: Path,
    hook: str = "mlp.up_proj",
    cfg=None,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    options: StoreOptions | None = None,
) -> Path:
    """Collect ``hook`` activations of block ``layer`` for every token of ``texts`` into ``out_dir``.

    ``groups`` names each text's item (texts of one item share a name and one side of the split); None
    makes every text its own group. ``options`` (default: from ``cfg``, a ``saes.config.SAEConfig``, else
    ``StoreOptions()``) say how. Returns ``out_dir``. An existing complete store made by the same request
    is reused after checking that ``model`` reproduces its first held-out document; any other existing
    store is an error. The manifest is written last, so a folder without one is an unfinished store.
    NaN/inf activations raise ``NonFiniteActivationsError``.
    """
    return collect_sites(
        model,
        tokenizer,
        texts,
        sites=[(layer, hook)],
        out_dirs=[out_dir],
        cfg=cfg,
        groups=groups,
        seed=seed,
        options=options,
    )[0]


@torch.no_grad()
def collect_sites(
    model,
    tokenizer,
    texts: list[str],
    *,
    sites: Sequence[Site],
    out_dirs: Sequence[Path],
    cfg=None,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    options: StoreOptions | None = None,
) -> list[Path]:
    """One store per (layer, hook) site in ``sites`` (into the matching ``out_dirs``) from ONE forward pass
    per batch of texts, stopped after the last hooked module (``bench.core.hooks.hooked_sites``).

    Each store is exactly the one ``collect_activations`` would write for its site (same request, same
    rows), so the stores share their layout: row r of every store is the same token, and
    ``saes.train_many`` reads one row order from all of them. Stores already complete for their request
    are reused (checked as in ``collect_activations``); only the others are collected. Returns ``out_dirs``.
    """
    o = options or StoreOptions.of(cfg)
    if (
        len(sites) != len(out_dirs)
        or len(set(sites)) != len(sites)
        or len({Path(d).resolve() for d in out_dirs}) != len(sites)
    ):
        raise ValueError(f"{len(sites)} sites for {len(out_dirs)} folders; give one distinct folder per distinct site")
    groups = [str(i) for i in range(len(texts))] if groups is None else [str(g) for g in groups]
    if len(groups) != len(texts):
        raise ValueError(f"{len(groups)} groups for {len(texts)} texts; give one group name per text")
    texts, groups = list(texts)[: o.max_texts], groups[: o.max_texts]
    if o.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"store dtype {o.dtype!r} not supported; allowed: float32, bfloat16")
    todo: dict[Site, _Target] = {}
    for site, out_dir in zip(sites, map(Path, out_dirs)):
        hook_name = module_path(model, hook_module(model, *site))
        request = _request(model, hook_name, texts, groups, site[0], site[1], seed, o)
        if not _reused(out_dir, request, model):
            todo[site] = _Target(out_dir, hook_name, request)
    if todo:
        lay = _layout(tokenizer, texts, groups, seed, o)
        d_in = _write_acts(model, tokenizer, lay, todo, o)
        index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        doc_group = np.array([index[g] for g in groups], dtype=np.int32)
        meta = _row_meta(lay)
        for site, t in todo.items():
            for name, arr in meta.items():
                np.save(t.out_dir / f"{name}.npy", arr)
            tokenizer.save_pretrained(t.out_dir / "tokenizer")  # so the store can be shown on its own
            np.save(t.out_dir / "doc_group.npy", doc_group)
            _write_docs_and_manifest(
                t.out_dir, lay.docs, lay.split, _manifest(t.request, lay, groups, d_in[site], tokenizer)
            )
    return [Path(d) for d in out_dirs]


@dataclass(frozen=True)
class _Target:
    out_dir: Path
    hook_name: str
    request: dict


def _reused(out_dir: Path, request: dict, model) -> bool:
    """True for a complete store made by ``request`` (after ``verify_store``); False for none; else an error."""
    if not (out_dir / "manifest.json").is_file():
        return False
    store = ActivationStore(out_dir)
    if store.manifest["request"] != request:
        raise StoreError(
            f"{out_dir} holds an activation store made by a different request; delete it or collect into another folder"
        )
    verify_store(store, model)
    log.info("reusing activation store %s", out_dir)
    return True


def _write_docs_and_manifest(
    out_dir: Path, docs: list[tuple[list[int], int]], split: np.ndarray, manifest: dict
) -> None:
    """Document token arrays, then the manifest (atomically, last: its presence marks a complete store)."""
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(ids) for ids, _ in docs])
    np.save(out_dir / "doc_tokens.npy", np.array([t for ids, _ in docs for t in ids], dtype=np.int32))
    np.save(out_dir / "doc_offsets.npy", offsets)
    np.save(out_dir / "doc_split.npy", split)
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))


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


def _batch(docs, batch: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(docs[d][0]) for d in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, d in enumerate(batch):
        ids[i, : len(docs[d][0])] = torch.tensor(docs[d][0])
        mask[i, : len(docs[d][0])] = 1
    return ids, mask


def _row_meta(lay: _Layout) -> dict[str, np.ndarray]:
    """token_ids / doc_index / positions of every stored row (they follow from the layout alone)."""
    n_total = sum(lay.n_role.values())
    dest = _destinations(lay.roles, lay.order, lay.n_role)
    meta = {name: np.zeros(n_total, dtype=np.int32) for name in ("token_ids", "doc_index", "positions")}
    for d in lay.order:
        pos = np.flatnonzero(dest[d] >= 0)
        meta["token_ids"][dest[d][pos]] = np.asarray(lay.docs[d][0], dtype=np.int32)[pos]
        meta["doc_index"][dest[d][pos]] = d
        meta["positions"][dest[d][pos]] = pos
    return meta


def _write_acts(model, tokenizer, lay: _Layout, todo: dict[Site, _Target], o: StoreOptions) -> dict[Site, int]:
    """Forward the documents in batches (right-padded), once for every site; write each site's rows into its
    ``acts.npy`` memmap at their places. Returns {site: d_in}."""
    n_total = sum(lay.n_role.values())
    dest = _destinations(lay.roles, lay.order, lay.n_role)
    acts: dict[Site, np.memmap] = {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(lay.order), o.batch_size):
            batch = lay.order[start : start + o.batch_size]
            ids, mask = _batch(lay.docs, batch, tokenizer.pad_token_id)
            outs = hooked_sites(model, ids.to(device), mask.to(device), list(todo))
            for site, out in outs.items():
                t = todo[site]
                for i, d in enumerate(batch):
                    pos = np.flatnonzero(dest[d] >= 0)
                    rows = out[i, torch.from_numpy(pos).to(out.device)]
                    check_finite(rows, f"activations of {t.hook_name} (text {d})")
                    if site not in acts:
                        t.out_dir.mkdir(parents=True, exist_ok=True)
                        acts[site] = np.lib.format.open_memmap(
                            t.out_dir / "acts.npy",
                            mode="w+",
                            shape=(n_total, rows.shape[-1]),
                            dtype=np.float32 if o.dtype == "float32" else np.int16,
                        )
                    acts[site][dest[d][pos]] = _to_disk(rows, o.dtype)
    finally:
        model.train(was_training)
    for a in acts.values():  # _layout raises unless some document is visited, and each visited one sets acts
        a.flush()
    return {site: int(a.shape[1]) for site, a in acts.items()}
