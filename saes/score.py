"""Score one trained SAE on the held-out split of its activation store (SPEC.md §5).

``score_sae`` loads the SAE (``SAE.load_from_disk``), checks that the model reproduces the store,
encodes every held-out token, computes the pure metrics of ``saes.metrics``, splices the SAE into the
model's forward for the CE score, mean-pools latents over the task's concept texts for k-sparse
probing (``saes.probe``), tests every latent for a redundant partner (``saes.correlation``) and for a
significant MonoSemanticity Score (``saes.monosemanticity``), writes ``eval_results.json`` (SAEBench
layout, ``saes.eval_output``) and returns the flat headline dict. Context embeddings for the
MonoSemanticity Score are computed once per token set and
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
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.core.embed import embed
from bench.core.errors import StoreError, check_finite
from bench.core.io import cache_dir, load_npy, write_text, write_with
from saes import metrics as M
from saes.ce import ce_losses
from saes.config import SAEConfig, SAEEvalConfig
from saes.correlation import decorrelation
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
from saes.monosemanticity import distinct_first, interpretable, monosemanticity_scores
from saes.probe import check_probe_texts, pooled_latents, probe_scores
from saes.store import ActivationStore, verify_store

log = logging.getLogger(__name__)

EVAL_RESULTS = "eval_results.json"
EmbedFn = Callable[[Sequence[str]], np.ndarray]


def load_sae(sae_dir: Path, device: str | torch.device = "cpu"):
    from sae_lens import SAE
    from safetensors import SafetensorError

    try:
        sae = SAE.load_from_disk(str(sae_dir), device=str(device))
    except (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        SafetensorError,
    ) as e:  # e.g.: "header too large", "invalid JSON in header"
        if not any(Path(sae_dir).glob("*.safetensors")) and not (Path(sae_dir) / "cfg.json").is_file():
            raise
        raise StoreError(
            f"SAE in {sae_dir} cannot be loaded ({str(e).splitlines()[0]}); its weights or cfg.json are damaged — "
            "delete the stage folder (it is then rebuilt) or restore it"
        ) from None
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
        z = sae.encode(x[s : s + chunk].to(dev))
        if z.is_sparse:
            z = z.to_dense()
        check_finite(z, "SAE latents")
        x_hat[s : s + chunk] = sae.decode(z).float().cpu()
        active += (z != 0).sum(0).double().cpu()
        if s < keep_tokens:
            kept.append(z[: max(0, keep_tokens - s)].float().cpu())
    return x_hat, active / max(1, x.shape[0]), torch.cat(kept)


def _default_embed() -> EmbedFn:

    return embed


def default_embed_cache() -> Path:
    """``<monobench cache>/sae_context_embeddings``: shared by every store with the same held-out tokens."""

    return cache_dir() / "sae_context_embeddings"


def context_strings(store: ActivationStore, tokenizer, *, n_rows: int, n_context: int) -> list[str]:
    """The context window of each of the first ``n_rows`` held-out tokens: the ``n_context`` tokens of its
    document ending at it, decoded without special tokens."""
    rows = range(store.n_train, store.n_train + n_rows)
    return [tokenizer.decode(store.context(r, n_context), skip_special_tokens=True) for r in rows]


def context_embeddings(
    texts: Sequence[str], *, embed_fn: EmbedFn | None = None, cache_dir: Path | None = None
) -> torch.Tensor:
    """Embedding of each context string (cached on disk).

    The cache file name hashes the encoder and every string, so the stores of different models over
    the same texts and seed (identical held-out tokens) share one file.
    """
    embed_fn = embed_fn or _default_embed()
    name = getattr(embed_fn, "__qualname__", type(embed_fn).__qualname__)
    h = hashlib.sha256(f"{embed_fn.__module__}.{name}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = Path(cache_dir or default_embed_cache()) / f"ctx_emb-{h.hexdigest()[:20]}.npy"
    if path.is_file():
        return torch.from_numpy(np.asarray(load_npy(path)))
    emb = np.asarray(embed_fn(list(texts)), dtype=np.float32)
    if emb.shape[0] != len(texts):
        raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(texts)} contexts")
    write_with(path, lambda p: np.save(p, emb))
    return torch.from_numpy(emb)


@dataclass(frozen=True)
class Concepts:
    """A task's concept texts for the probe: texts, binary labels, and the item each text was made from."""

    texts: Sequence[str] = ()
    labels: Sequence[int] = ()
    groups: Sequence[str] | None = None


def score_sae(
    sae_dir: Path,
    store_dir: Path,
    model,
    tokenizer,
    *,
    layer: int,
    hook: str,
    concepts: Concepts = Concepts(),
    cfg: SAEConfig | SAEEvalConfig | None = None,
    out_dir: Path | None = None,
    seed: int = 0,
    embed_fn: EmbedFn | None = None,
    embed_cache_dir: Path | None = None,
) -> dict[str, float]:
    """All SPEC §5 scores of the SAE in ``sae_dir`` on ``store_dir``'s held-out tokens.

    Writes ``<out_dir or sae_dir>/eval_results.json`` (the store is recorded relative to that folder) and
    returns ``headline_metrics`` of it. ``model`` must be the model the store was collected from
    (checked); a PEFT-wrapped model works.
    """
    ev, store = _checked_inputs(store_dir, layer, hook, concepts, cfg)
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
        dec = decorrelation(
            z[:, alive], threshold=ev.decor_threshold, alpha=ev.decor_alpha, draws=ev.decor_null_draws, seed=seed
        )
    with _timed(seconds, "monosemanticity"):
        ms, n_ctx = _monosemanticity(store, tokenizer, z[:, alive], ev, seed, embed_fn, embed_cache_dir)
    with _timed(seconds, "ce"):
        ce = _ce(model, store, sae, ev, layer=layer, hook=hook)
    with _timed(seconds, "probe"):
        probe = _probe(model, tokenizer, sae, store, ev, concepts, layer=layer, hook=hook, seed=seed)
    where = Path(out_dir or sae_dir)
    rel = os.path.relpath(Path(store_dir).resolve(), where.resolve())
    config = dict(ev.model_dump(mode="json"), layer=layer, hook=hook, seed=seed, store=rel)
    config["store_request"] = store.manifest["request"]
    metrics = _groups(ev, x, x_hat, density, dec, ms, ce, probe, n_lat, n_ctx, len(concepts.texts))
    extra = {"seconds": {k: round(v, 3) for k, v in seconds.items()}}
    out = SAEEvalOutput(
        eval_config=config,
        eval_id=str(uuid.uuid4()),
        datetime_epoch_millis=int(time.time() * 1000),
        eval_result_metrics=metrics,
        eval_result_details=_details(density, alive, dec, ms, ev),
        sae_lens_version=_sae_lens_version(),
        sae_cfg_dict=sae.cfg.to_dict(),
        eval_result_unstructured=extra,
    )
    _write(where / EVAL_RESULTS, out)
    return headline_metrics(out)


def _checked_inputs(
    store_dir: Path, layer: int, hook: str, concepts: Concepts, cfg
) -> tuple[SAEEvalConfig, ActivationStore]:
    ev = cfg.eval if isinstance(cfg, SAEConfig) else (cfg or SAEEvalConfig())
    if len(concepts.texts) != len(concepts.labels):
        raise ValueError(f"{len(concepts.texts)} concept texts but {len(concepts.labels)} concept labels")
    store = ActivationStore(Path(store_dir))
    req = store.manifest["request"]
    if (req["layer"], req["hook"]) != (layer, hook):
        raise ValueError(f"the store was collected at layer {req['layer']} {req['hook']!r}, not layer {layer} {hook!r}")
    return ev, store


def _monosemanticity(store, tokenizer, z: torch.Tensor, ev: SAEEvalConfig, seed: int, embed_fn, cache_dir):
    """(MS, p-value, null 95th percentile) of each latent over the distinct contexts of the first held-out
    tokens, and how many distinct contexts there were."""
    ctx = context_strings(store, tokenizer, n_rows=z.shape[0], n_context=ev.ms_context_tokens)
    first = distinct_first(ctx)
    emb = context_embeddings([ctx[i] for i in first], embed_fn=embed_fn, cache_dir=cache_dir)
    ms = monosemanticity_scores(
        z[torch.from_numpy(first)], emb, top_n=ev.ms_top_n, null_draws=ev.ms_null_draws, seed=seed
    )
    return ms, len(first)


def _probe(
    model,
    tokenizer,
    sae,
    store: ActivationStore,
    ev: SAEEvalConfig,
    concepts: Concepts,
    *,
    layer: int,
    hook: str,
    seed: int,
) -> tuple[float, float]:
    req = store.manifest["request"]
    n = ev.probe_max_length if ev.probe_max_length is not None else req["max_length"]
    chat = req["use_chat_template"]
    check_probe_texts(tokenizer, concepts.texts, concepts.labels, max_length=n, use_chat_template=chat)
    feats = pooled_latents(
        model,
        tokenizer,
        sae,
        concepts.texts,
        layer=layer,
        hook=hook,
        max_length=n,
        batch_size=ev.batch_size,
        use_chat_template=chat,
        special_ids=store.manifest["special_ids"],
        store=store,
    )
    groups = concepts.groups if ev.probe_split == "grouped" else None
    return probe_scores(feats, concepts.labels, test_frac=ev.probe_test_frac, seed=seed, groups=groups)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _groups(
    ev: SAEEvalConfig,
    x,
    x_hat,
    density,
    dec: dict,
    ms: tuple,
    ce: tuple[float, float, float, int] | None,
    probe,
    n_lat: int,
    n_ctx: int,
    n_texts: int,
) -> SAEMetricCategories:
    n_alive = int((density > 0).sum())
    interp = interpretable(ms[1], ev.ms_alpha)
    both = interp & ~dec["correlated"]
    frac = lambda m: float(m.double().mean()) if n_alive else 0.0  # noqa: E731
    return SAEMetricCategories(
        reconstruction=Reconstruction(
            mse=M.sae_mse(x, x_hat), explained_variance=M.sae_explained_variance(x, x_hat), n_tokens=x.shape[0]
        ),
        sparsity=Sparsity(
            l0=M.sae_l0(density),
            dead_frac=M.sae_dead_frac(density),
            dense_frac=M.sae_dense_frac(density, ev.dense_threshold),
            n_alive=n_alive,
            n_tokens=x.shape[0],
        ),
        model_performance_preservation=_model_performance(ce, ev.ce_min_gap),
        monosemanticity=Monosemanticity(
            frac_decorrelated=dec["frac_decorrelated"],
            frac_decorrelated_null=dec["null"],
            frac_interpretable=frac(interp),
            frac_interp_decor=frac(both),
            mean_ms=float(ms[0].nanmean()) if n_alive and ms[0].isfinite().any() else None,
            n_tokens=n_lat,
            n_contexts=n_ctx,
        ),
        sparse_probing=SparseProbing(top1=probe[0], top5=probe[1], n_texts=n_texts),
    )


def _details(density, alive, dec: dict, ms: tuple, ev: SAEEvalConfig) -> list[FeatureDetail]:
    alive_ids = torch.nonzero(alive).squeeze(1).tolist()
    partner = [alive_ids[j] if j >= 0 else None for j in dec["partner"].tolist()]
    rows, a = [], 0
    for i, (p, is_alive) in enumerate(zip(density.tolist(), alive.tolist())):
        if not is_alive:
            rows.append(FeatureDetail(feature=i, density=p))
            continue
        rows.append(
            FeatureDetail(
                feature=i,
                density=p,
                ms_score=float(ms[0][a]),
                ms_p_value=float(ms[1][a]),
                ms_null_p95=float(ms[2][a]),
                interpretable=bool(ms[1][a] <= ev.ms_alpha),
                max_abs_corr=float(dec["max_abs_corr"][a]),
                corr_partner=partner[a],
                corr_p_value=float(dec["p_value"][a]),
                correlated=bool(dec["correlated"][a]),
            )
        )
        a += 1
    return rows


def _write(path: Path, out: SAEEvalOutput) -> None:
    write_text(path, out.model_dump_json(indent=1))


def read_eval_results(path: Path) -> SAEEvalOutput:
    """Parse an ``eval_results.json`` (a file, or a folder holding one)."""
    path = Path(path)
    return SAEEvalOutput.model_validate_json((path / EVAL_RESULTS if path.is_dir() else path).read_text())


def _sae_lens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")


def _ce(model, store, sae, ev: SAEEvalConfig, *, layer: int, hook: str) -> tuple[float, float, float, int] | None:
    """``saes.ce.ce_losses`` on ``ev.ce_max_docs`` held-out documents; None when that is 0 (no CE score)."""
    if ev.ce_max_docs == 0:
        return None
    return ce_losses(model, store, sae, layer=layer, hook=hook, max_docs=ev.ce_max_docs, batch_size=ev.batch_size)


def _model_performance(ce: tuple[float, float, float, int] | None, min_gap: float) -> ModelPerformance:
    """CE score, Δ and gap (nats) from (clean, spliced, zero-ablated, tokens); all undefined (None, 0 tokens)
    when no CE was computed (``ce_max_docs = 0``)."""
    if ce is None:
        return ModelPerformance(
            ce_score=None, ce_delta=None, ce_gap=None, ce_clean=None, ce_sae=None, ce_zero_ablation=None, n_tokens=0
        )
    return ModelPerformance(
        ce_score=M.sae_ce_score(*ce[:3], min_gap=min_gap),
        ce_delta=ce[1] - ce[0],
        ce_gap=ce[2] - ce[0],
        ce_clean=ce[0],
        ce_sae=ce[1],
        ce_zero_ablation=ce[2],
        n_tokens=ce[3],
    )
