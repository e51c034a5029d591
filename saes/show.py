"""Show one SAE latent: its top held-out contexts with the activating token marked «like this».

``format_feature`` reads the SAE (``SAE.load_from_disk``), the activation store's held-out tokens and,
if present, ``eval_results.json`` (density, MonoSemanticity Score and its null, max |corr|).
``show_feature(run, feature)`` finds the store and its saved tokenizer from the run folder alone; it
backs ``python -m bench show-feature RUN FEATURE``.

Example::

    python -c "from saes.show import format_feature; from bench.models import load_tokenizer; \
print(format_feature('/tmp/sae', '/tmp/st', load_tokenizer('embedded:smollm2-135m-instruct'), 3))"
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core.errors import ConfigError, StoreError
from bench.core.io import read_json
from saes.score import EVAL_RESULTS, load_sae, read_eval_results
from saes.store import ActivationStore


def _sae_folder(run_dir: Path) -> Path:
    for cand in (run_dir, run_dir / "sae"):
        if (cand / "cfg.json").is_file():
            return cand
    raise StoreError(f"no SAE (cfg.json) in {run_dir} or {run_dir / 'sae'}; pass the folder train_sae wrote")


def _eval_file(run_dir: Path, sae_dir: Path) -> Path | None:
    for cand in (run_dir, sae_dir, sae_dir.parent):
        if (cand / EVAL_RESULTS).is_file():
            return cand / EVAL_RESULTS
    return None


@torch.no_grad()
def feature_activations(sae, store: ActivationStore, feature: int, chunk: int = 4096) -> torch.Tensor:
    """z_feature on every held-out token, in store order."""
    x = store.heldout_acts()
    out = []
    for s in range(0, x.shape[0], chunk):
        z = sae.encode(x[s : s + chunk])
        out.append((z.to_dense() if z.is_sparse else z)[:, feature].float())
    return torch.cat(out)


def recorded_store(eval_file: Path, results) -> Path:
    """The activation store an ``eval_results.json`` names (relative paths are relative to its folder)."""
    store = Path(results.eval_config["store"])
    return store if store.is_absolute() else (Path(eval_file).parent / store).resolve()


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_feature(
    sae_run_dir: Path,
    activation_store_dir: Path | None,
    tokenizer,
    feature: int,
    n: int = 10,
    context_tokens: int = 16,
    after_tokens: int = 4,
) -> str:
    """Text block: header (density, MS, null p95, max |corr|) and the top-``n`` held-out contexts.

    ``sae_run_dir`` is the SAE folder or a folder holding it as ``sae/`` (the runner's stage folder).
    ``activation_store_dir`` None means the store recorded in ``eval_results.json``.
    """
    run_dir = Path(sae_run_dir)
    sae_dir = _sae_folder(run_dir)
    sae = load_sae(sae_dir, "cpu")
    d_sae = sae.cfg.d_sae
    if not 0 <= feature < d_sae:
        raise ConfigError(f"feature {feature} out of range; this SAE has latents 0..{d_sae - 1}")
    path = _eval_file(run_dir, sae_dir)
    results = read_eval_results(path) if path is not None else None
    if activation_store_dir is None:
        if results is None or path is None:
            raise StoreError(f"no {EVAL_RESULTS} near {run_dir} to find the activation store in; pass it")
        activation_store_dir = recorded_store(path, results)
    store = ActivationStore(Path(activation_store_dir))
    z = feature_activations(sae, store, feature)
    lines = [f"feature {feature} of {d_sae} ({sae.cfg.architecture()} SAE, {sae_dir})", _header(z, results, feature)]
    vals, idx = z.topk(min(n, z.numel()))
    for v, i in zip(vals.tolist(), idx.tolist()):
        if v <= 0:
            break
        row = store.n_train + i
        before, tok, after = context_parts(store, tokenizer, row, context_tokens, after_tokens)
        text = f"{before}«{tok}»{after}".replace("\n", "⏎")
        lines.append(f"{v:9.3f}  doc {int(store.doc_index[row]):<5} pos {int(store.positions[row]):<4} {text}")
    if len(lines) == 2:
        lines.append("(never active on held-out tokens)")
    return "\n".join(lines)


def _header(z: torch.Tensor, results, feature: int) -> str:
    density = float((z != 0).double().mean())
    ms = null = corr = p = None
    alpha = 0.05
    if results is not None:
        det = results.eval_result_details[feature]
        ms, null, corr, p = det.ms_score, det.ms_null_p95, det.max_abs_corr, det.ms_p_value
        alpha = results.eval_config.get("ms_alpha", alpha)
    verdict = "" if p is None else ("  (interpretable)" if p <= alpha else "  (not significant)")
    return (
        f"density {density:.4f} on {z.numel()} held-out tokens   MS {_fmt(ms)} (p {_fmt(p)})   null p95 "
        f"{_fmt(null)}   max|corr| {_fmt(corr)}{verdict}"
    )


def context_parts(
    store: ActivationStore, tokenizer, row: int, before: int = 16, after: int = 4
) -> tuple[str, str, str]:
    """(text before, the token, text after) of stored ``row``: ``before`` − 1 tokens up to it, ``after`` past it."""
    d, p = int(store.doc_index[row]), int(store.positions[row])
    doc = store.doc(d)
    dec = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return dec(doc[max(0, p - before + 1) : p]), dec(doc[p : p + 1]), dec(doc[p + 1 : p + 1 + after])


def _moved_store(run_dir: Path, recorded: Path) -> Path:
    """Where a store recorded at ``recorded`` is now that the results folder moved: the nearest ancestor of
    ``run_dir`` holding its last two path parts (``acts-<key>/layer<L>`` of a grid SAE) or its name."""
    for anc in run_dir.parents:
        for tail in (Path(recorded.parent.name) / recorded.name, Path(recorded.name)):
            if (anc / tail / "tokenizer").is_dir():
                return anc / tail
    return run_dir.parent / recorded.name


def show_feature(run_dir: Path, feature: int, n: int = 10) -> str:
    """``format_feature`` for a scored run folder: the store is the one recorded in ``eval_results.json``
    (or, if that path moved, found beside the run's folders: ``_moved_store``), with its saved tokenizer."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    sae_dir = _sae_folder(run_dir)
    path = _eval_file(run_dir, sae_dir)
    if path is not None:
        recorded = recorded_store(path, read_eval_results(path))
    elif (sae_dir / "training.json").is_file():  # an unscored SAE (the base SAE): the store it trained on
        recorded = (sae_dir / read_json(sae_dir / "training.json")["store"]).resolve()
    else:
        raise StoreError(f"no {EVAL_RESULTS} or training.json in {run_dir}; which activation store to read is unknown")
    store_dir = recorded if recorded.is_dir() else _moved_store(run_dir, recorded)
    if not (store_dir / "tokenizer").is_dir():
        raise StoreError(
            f"activation store {store_dir} (recorded in {path}) is missing or has no saved "
            "tokenizer; pass the store and a tokenizer to saes.show.format_feature"
        )
    return format_feature(run_dir, store_dir, AutoTokenizer.from_pretrained(store_dir / "tokenizer"), feature, n)
