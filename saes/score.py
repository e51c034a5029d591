"""Score one trained SAE on the held-out split of its activation store (SPEC.md §5).

``score_sae`` loads the SAE (``SAE.load_from_disk``), checks that the model reproduces the store,
encodes every held-out token, computes the pure metrics of ``saes.metrics``, splices the SAE into the
model's forward for the CE score, mean-pools latents over the task's concept texts for k-sparse
probing, writes ``eval_results.json`` (SAEBench layout, ``saes.eval_output``) and returns the flat
headline dict. Context embeddings for the MonoSemanticity Score are computed once per token set and
cached under a content hash (in ``<monobench cache>/sae_context_embeddings`` unless ``embed_cache_dir``
is given), so every latent, every SAE and every model's store over the same held-out tokens reuses them.

Example::

    python -c "from bench.models import load_model; from saes.score import score_sae; \
m, t = load_model('tiny:llama'); print(score_sae('/tmp/sae', '/tmp/st', m, t, layer=1, hook='mlp.up_proj'))"
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.lm import decoder_layers, hook_module
from saes import metrics as M
from saes.activations import (
    ActivationStore,
    check_finite,
    hooked_activations,
    tokenize_docs,
    verify_store,
)
from saes.config import SAEConfig, SAEEvalConfig
from saes.eval_output import (
    FeatureDetail,
    ModelPerformance,
    Monosemanticity,
    Reconstruction,
    SAEEvalOutput,
    SAEMetricCategories,
    SparseProbing,
    Sparsity,
    headline_metrics,
)

log = logging.getLogger(__name__)

EVAL_RESULTS = "eval_results.json"
EmbedFn = Callable[[Sequence[str]], np.ndarray]


def load_sae(sae_dir: Path, device: str | torch.device = "cpu"):
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device=str(device))
    sae.eval()
    return sae


@torch.no_grad()
def encode_heldout(sae, x: torch.Tensor, keep_tokens: int, chunk: int = 4096):
    """(x̂ for all tokens, latent density over all tokens, z of the first ``keep_tokens`` tokens)."""
    dev = sae.W_dec.device
    x_hat = torch.empty_like(x)
    active = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    kept = []
    for s in range(0, x.shape[0], chunk):
        z = sae.encode(x[s:s + chunk].to(dev))
        if z.is_sparse:
            z = z.to_dense()
        check_finite(z, "SAE latents")
        x_hat[s:s + chunk] = sae.decode(z).float().cpu()
        active += (z != 0).sum(0).double().cpu()
        if s < keep_tokens:
            kept.append(z[:max(0, keep_tokens - s)].float().cpu())
    return x_hat, active / max(1, x.shape[0]), torch.cat(kept)


def _default_embed() -> EmbedFn:
    from tasks.embed import embed

    return embed


def default_embed_cache() -> Path:
    """``<monobench cache>/sae_context_embeddings``: shared by every store with the same held-out tokens."""
    from bench.models import cache_dir

    return cache_dir() / "sae_context_embeddings"


def context_embeddings(store: ActivationStore, tokenizer, *, n_rows: int, n_context: int,
                       embed_fn: EmbedFn | None = None, cache_dir: Path | None = None) -> torch.Tensor:
    """Embedding of each of the first ``n_rows`` held-out tokens' context windows (cached on disk).

    The window is the ``n_context`` tokens of the document ending at the token, decoded without
    special tokens. The cache file name hashes the encoder and every context string, so the stores of
    different models over the same texts and seed (identical held-out tokens) share one file.
    """
    embed_fn = embed_fn or _default_embed()
    rows = range(store.n_train, store.n_train + n_rows)
    texts = [tokenizer.decode(store.context(r, n_context), skip_special_tokens=True) for r in rows]
    name = getattr(embed_fn, "__qualname__", type(embed_fn).__qualname__)
    h = hashlib.sha256(f"{embed_fn.__module__}.{name}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = Path(cache_dir or default_embed_cache()) / f"ctx_emb-{h.hexdigest()[:20]}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    emb = np.asarray(embed_fn(texts), dtype=np.float32)
    if emb.shape[0] != len(texts):
        raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(texts)} contexts")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ctx_emb.", suffix=".npy", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, emb)
    os.replace(tmp, path)
    return torch.from_numpy(emb)


@contextlib.contextmanager
def spliced(model, *, layer: int, hook: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the hooked module's output o with fn(o) for every forward inside the block."""
    def replace(_mod, _inp, out):
        if isinstance(out, torch.Tensor):
            return fn(out)
        return (fn(out[0]), *out[1:])

    handle = hook_module(model, layer, hook).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _heldout_batches(store: ActivationStore, docs: list[int], batch_size: int, device,
                     crop: int | None = None) -> Iterator[tuple]:
    """(ids, attention mask, stored-position mask) for held-out documents (first ``crop`` tokens), right-padded."""
    ho = store.heldout
    doc_idx, pos = np.asarray(store.doc_index[ho]), np.asarray(store.positions[ho])
    pad = store.manifest["pad_token_id"]
    for s in range(0, len(docs), batch_size):
        batch = docs[s:s + batch_size]
        toks = [store.doc(d)[:crop] for d in batch]
        width = max(map(len, toks))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        kept = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (d, t) in enumerate(zip(batch, toks)):
            ids[i, :len(t)] = torch.tensor(t)
            att[i, :len(t)] = 1
            p = pos[doc_idx == d].astype(np.int64)
            kept[i, torch.from_numpy(p[p < len(t)])] = True
        yield ids.to(device), att.to(device), kept.to(device)


class _Passthrough(torch.nn.Module):
    """Stands in for a block below the resumed one: hands its input hidden states on, computing nothing."""

    def __init__(self, block: torch.nn.Module, tuple_out: bool):
        super().__init__()
        self.tuple_out = tuple_out
        if hasattr(block, "attention_type"):  # models that pick a mask per block read it
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.tuple_out else hidden_states


@contextlib.contextmanager
def captured_block_input(model, layer: int) -> Iterator[dict]:
    """Record the hidden states entering block ``layer`` (``box["hidden"]``) and whether blocks return tuples."""
    block, box = decoder_layers(model)[layer], {}

    def pre(_mod, args, kwargs):
        box["hidden"] = args[0] if args else kwargs["hidden_states"]

    def post(_mod, _inp, out):
        box["tuple_out"] = isinstance(out, tuple)

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    try:
        yield box
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def resumed_at(model, layer: int, hidden: torch.Tensor, tuple_out: bool) -> Iterator[None]:
    """Inside the block a forward skips blocks 0..layer−1 and feeds ``hidden`` into block ``layer``.

    Embeddings, masks and position embeddings are still made by the model's own forward, so blocks
    ``layer``… compute exactly what they compute in a full forward whose block ``layer`` input is
    ``hidden`` (``captured_block_input`` of a full forward on the same batch).
    """
    blocks = decoder_layers(model)
    saved = [blocks[i] for i in range(layer)]

    def swap(_mod, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[layer].register_forward_pre_hook(swap, with_kwargs=True)
    try:
        for i, block in enumerate(saved):
            blocks[i] = _Passthrough(block, tuple_out)
        yield
    finally:
        handle.remove()
        for i, block in enumerate(saved):
            blocks[i] = block


@torch.no_grad()
def ce_losses(model, store: ActivationStore, sae, *, layer: int, hook: str, max_docs: int | None = None,
              batch_size: int = 16, crop: int | None = None, share_prefix: bool = True) -> tuple[float, float, float, int]:
    """Mean next-token CE (clean, SAE spliced, zero-ablated) over held-out documents, and the token count.

    As in ``sae_lens.evals.get_recons_loss``: the SAE replaces the hooked output only at stored
    (non-special) positions, zero-ablation zeroes every position, and the loss at position t (predicting
    t+1) counts when token t is a stored token. With ``share_prefix`` the blocks below ``layer``, identical
    in the three forwards, run once per batch (the clean forward); the spliced and zero-ablated forwards
    resume at block ``layer`` from its recorded input (same numbers as three full forwards).
    """
    docs = store.heldout_docs()
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))[:max_docs]]   # fixed random subset
    docs.sort(key=lambda d: len(store.doc(d)))                                              # less padding
    device = next(model.parameters()).device
    sums, count = torch.zeros(3, dtype=torch.float64), 0
    was_training = model.training
    model.eval()
    try:
        for ids, att, kept in _heldout_batches(store, docs, batch_size, device, crop):
            target = kept[:, :-1] & att[:, 1:].bool()

            def with_sae(o, kept=kept):
                rec = sae.decode(sae.encode(o.float().to(sae.W_dec.device))).to(o.device, o.dtype)
                return torch.where(kept[..., None], rec, o)

            box: dict = {}
            for i, fn in enumerate((None, with_sae, torch.zeros_like)):
                with contextlib.ExitStack() as ctx:
                    if fn is None and share_prefix and layer > 0:
                        box = ctx.enter_context(captured_block_input(model, layer))
                    if fn is not None:
                        ctx.enter_context(spliced(model, layer=layer, hook=hook, fn=fn))
                        if "hidden" in box:
                            ctx.enter_context(resumed_at(model, layer, box["hidden"], box["tuple_out"]))
                    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
                ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                sums[i] += ce[target].double().sum().cpu()
            count += int(target.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no held-out token has a next token to predict; use longer texts")
    clean, with_sae_ce, zero = (sums / count).tolist()
    return clean, with_sae_ce, zero, count


@torch.no_grad()
def pooled_latents(model, tokenizer, sae, texts: Sequence[str], *, layer: int, hook: str, max_length: int,
                   batch_size: int, use_chat_template: bool, special_ids: Sequence[int],
                   store: ActivationStore | None = None) -> torch.Tensor:
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
        out[list(in_store)] = _pooled_from_store(store, sae, list(in_store.values()))
    todo = [i for i in range(len(docs)) if i not in in_store]
    order = sorted(todo, key=lambda i: len(docs[i][0]))      # batches of similar length
    device = next(model.parameters()).device
    special = set(special_ids)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            batch = [docs[i] for i in rows]
            width = max(1, max(len(ids) for ids, _ in batch))
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            keep = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, (t, start) in enumerate(batch):
                ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
                att[i, :len(t)] = 1
                keep[i, :len(t)] = torch.tensor([j >= start and v not in special for j, v in enumerate(t)])
            acts = hooked_activations(model, ids.to(device), att.to(device), layer=layer, hook=hook).float()
            check_finite(acts, f"activations of {hook} on concept texts")
            z = sae.encode(acts.to(sae.W_dec.device)).float().cpu()
            w = keep.float()[..., None]
            out[rows] = (z * w).sum(1) / w.sum(1).clamp_min(1.0)
    finally:
        model.train(was_training)
    return out


def check_probe_texts(tokenizer, texts: Sequence[str], labels: Sequence[int], *, max_length: int,
                      use_chat_template: bool) -> None:
    """Raise if truncation to ``max_length`` tokens leaves two concept texts with different labels the
    same tokens: their pooled latents would be equal, and the probe could not tell their labels apart."""
    seen: dict[tuple[int, ...], int] = {}
    clashes = 0
    for (ids, _), label in zip(tokenize_docs(tokenizer, texts, max_length=max_length,
                                             use_chat_template=use_chat_template), labels):
        clashes += seen.setdefault(tuple(ids), label) != label
    if clashes:
        longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
        raise ValueError(f"{clashes} concept texts have the same first {max_length} tokens as a text with the other "
                         f"label, so the probe cannot separate them; raise sae.context_length (or "
                         f"sae.eval.probe_max_length) to {longest}, the longest concept text's tokens")


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
        x = store.rows(rows[s:s + chunk])
        check_finite(x, f"stored activations in {store.path}")
        z = sae.encode(x.to(sae.W_dec.device))
        sums.index_add_(0, owner[s:s + chunk], (z.to_dense() if z.is_sparse else z).float().cpu())
    counts = torch.bincount(owner, minlength=len(unique)).clamp_min(1)
    return (sums / counts[:, None])[torch.from_numpy(back)]


def probe_scores(features: torch.Tensor, labels: Sequence[int], *, test_frac: float, seed: int,
                 groups: Sequence[str] | None = None) -> tuple[float, float]:
    """(top-1, top-5) k-sparse probe accuracy; NaN (with a warning) without enough texts of both labels.

    The test split is ``test_frac`` of the texts, stratified by label and seeded. With ``groups`` it
    is whole groups instead: the first fold of a seeded ``StratifiedGroupKFold`` with
    round(1 / test_frac) folds (test_frac 0.3 → a third of the groups).
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=2) if y.size else np.zeros(2, dtype=int)
    if y.size == 0 or set(np.unique(y)) - {0, 1} or counts.min() < 2:
        log.warning("SAE probe skipped: need binary concept labels with ≥ 2 texts per class, got counts %s",
                    counts.tolist())
        return math.nan, math.nan
    if groups is None:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_frac, stratify=y, random_state=seed)
    else:
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} concept groups for {len(y)} concept texts")
        folds = StratifiedGroupKFold(n_splits=max(2, round(1 / test_frac)), shuffle=True, random_state=seed)
        tr, te = next(folds.split(np.zeros(len(y)), y, groups))
    lab, tr_t, te_t = torch.from_numpy(y), torch.from_numpy(tr), torch.from_numpy(te)
    return tuple(M.k_sparse_probe_accuracy(features, lab, k, tr_t, te_t) for k in (1, 5))


def score_sae(sae_dir: Path, store_dir: Path, model, tokenizer, *, layer: int, hook: str,
              concept_texts: Sequence[str] = (), concept_labels: Sequence[int] = (),
              concept_groups: Sequence[str] | None = None, cfg: SAEConfig | SAEEvalConfig | None = None,
              out_dir: Path | None = None, seed: int = 0,
              embed_fn: EmbedFn | None = None, embed_cache_dir: Path | None = None) -> dict[str, float]:
    """All SPEC §5 scores of the SAE in ``sae_dir`` on ``store_dir``'s held-out tokens.

    Writes ``<out_dir or sae_dir>/eval_results.json`` and returns ``headline_metrics`` of it (keys
    ``sae_mse`` … ``sae_probe_top5`` and ``sae_n_alive``). ``model`` must be the model the store was
    collected from (checked); a PEFT-wrapped model works.
    """
    ev = cfg.eval if isinstance(cfg, SAEConfig) else (cfg or SAEEvalConfig())
    if len(concept_texts) != len(concept_labels):
        raise ValueError(f"{len(concept_texts)} concept texts but {len(concept_labels)} concept labels")
    store = ActivationStore(Path(store_dir))
    req = store.manifest["request"]
    if (req["layer"], req["hook"]) != (layer, hook):
        raise ValueError(f"the store was collected at layer {req['layer']} {req['hook']!r}, not layer {layer} {hook!r}")
    seconds: dict[str, float] = {}
    with _timed(seconds, "encode"):
        sae = load_sae(Path(sae_dir), next(model.parameters()).device)
        verify_store(store, model)
        x = store.heldout_acts()
        check_finite(x, f"held-out activations in {store.path}")
        n_lat = min(ev.latent_max_tokens, x.shape[0])
        x_hat, density, z = encode_heldout(sae, x, n_lat)
        alive = density > 0
    with _timed(seconds, "correlation"):
        corr = M.max_abs_correlation(z[:, alive])
    with _timed(seconds, "context_embeddings"):
        emb = context_embeddings(store, tokenizer, n_rows=n_lat, n_context=ev.ms_context_tokens,
                                 embed_fn=embed_fn, cache_dir=embed_cache_dir)
    with _timed(seconds, "monosemanticity"):
        ms, null_p = M.monosemanticity_scores(z[:, alive], emb, top_n=ev.ms_top_n, null_draws=ev.ms_null_draws,
                                              percentile=ev.ms_null_percentile, seed=seed)
    with _timed(seconds, "ce"):
        ce = ce_losses(model, store, sae, layer=layer, hook=hook, max_docs=ev.ce_max_docs, batch_size=ev.batch_size)
    with _timed(seconds, "probe"):
        probe_len = ev.probe_max_length if ev.probe_max_length is not None else req["max_length"]
        check_probe_texts(tokenizer, concept_texts, concept_labels, max_length=probe_len,
                          use_chat_template=req["use_chat_template"])
        feats = pooled_latents(model, tokenizer, sae, concept_texts, layer=layer, hook=hook,
                               max_length=probe_len, batch_size=ev.batch_size,
                               use_chat_template=req["use_chat_template"], special_ids=store.manifest["special_ids"],
                               store=store)
        probe = probe_scores(feats, concept_labels, test_frac=ev.probe_test_frac, seed=seed,
                             groups=concept_groups if ev.probe_split == "grouped" else None)
    out = SAEEvalOutput(
        eval_config=dict(ev.model_dump(mode="json"), layer=layer, hook=hook, seed=seed,
                         store=str(Path(store_dir).resolve()), store_request=req),
        eval_id=str(uuid.uuid4()), datetime_epoch_millis=int(time.time() * 1000),
        eval_result_metrics=_groups(ev, x, x_hat, density, corr, ms, null_p, ce, probe, n_lat, len(concept_texts)),
        eval_result_details=_details(density, alive, ms, null_p, corr),
        sae_lens_version=_sae_lens_version(), sae_cfg_dict=sae.cfg.to_dict(),
        eval_result_unstructured={"seconds": {k: round(v, 3) for k, v in seconds.items()}})
    _write(Path(out_dir or sae_dir) / EVAL_RESULTS, out)
    return headline_metrics(out)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _groups(ev: SAEEvalConfig, x, x_hat, density, corr, ms, null_p, ce, probe, n_lat: int,
            n_texts: int) -> SAEMetricCategories:
    n_alive, thr = int((density > 0).sum()), ev.decor_threshold
    return SAEMetricCategories(
        reconstruction=Reconstruction(mse=M.sae_mse(x, x_hat), explained_variance=M.sae_explained_variance(x, x_hat)),
        sparsity=Sparsity(l0=M.sae_l0(density), dead_frac=M.sae_dead_frac(density),
                          dense_frac=M.sae_dense_frac(density, ev.dense_threshold), n_alive=n_alive,
                          n_tokens=x.shape[0]),
        model_performance_preservation=ModelPerformance(ce_score=M.sae_ce_score(*ce[:3]), ce_clean=ce[0],
                                                        ce_sae=ce[1], ce_zero_ablation=ce[2], n_tokens=ce[3]),
        monosemanticity=Monosemanticity(
            frac_decorrelated=M.sae_frac_decorrelated(corr, thr), frac_interpretable=M.sae_frac_interpretable(ms, null_p),
            frac_interp_decor=M.sae_frac_interp_decor(ms, null_p, corr, thr),
            mean_ms=float(ms.nanmean()) if n_alive and ms.isfinite().any() else None, n_tokens=n_lat),
        sparse_probing=SparseProbing(top1=probe[0], top5=probe[1], n_texts=n_texts))


def _details(density, alive, ms, null_p, corr) -> list[FeatureDetail]:
    rows = []
    a = 0
    for i, (p, is_alive) in enumerate(zip(density.tolist(), alive.tolist())):
        if is_alive:
            rows.append(FeatureDetail(feature=i, density=p, ms_score=float(ms[a]), ms_null_p95=float(null_p[a]),
                                      max_abs_corr=float(corr[a])))
            a += 1
        else:
            rows.append(FeatureDetail(feature=i, density=p))
    return rows


def _write(path: Path, out: SAEEvalOutput) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(out.model_dump_json(indent=1))
    os.replace(tmp, path)


def read_eval_results(path: Path) -> SAEEvalOutput:
    """Parse an ``eval_results.json`` (a file, or a folder holding one)."""
    path = Path(path)
    return SAEEvalOutput.model_validate_json((path / EVAL_RESULTS if path.is_dir() else path).read_text())


def _sae_lens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")
