"""Export one SAE for the browser: its latent table and a page of data for each of its exported latents.

Data files are JavaScript (``MB_DATA["<name>"] = {...};``) so the pages can load them lazily with a
``<script>`` tag from the file system, where browsers refuse ``fetch`` of local files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.browse.catalog import SAEEntry, View
from bench.browse.config import BrowseConfig
from bench.browse.latents import Reading, best_matches, heldout_reading
from bench.core.io import read_json, write_text
from saes.replay import ReplayedRows
from saes.score import EVAL_RESULTS, load_sae
from saes.store import ActivationStore

log = logging.getLogger(__name__)
FRESH_COLUMNS = [
    "density",
    "ms_score",
    "ms_null_p95",
    "ms_p_value",
    "interpretable",
    "max_abs_corr",
    "corr_partner",
    "correlated",
]


def write_data(folder: Path, name: str, payload: Any) -> str:
    """``<folder>/data/<name>.js`` setting ``MB_DATA[name]``; returns the path relative to ``folder``."""
    rel = f"data/{name}.js"
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    write_text(folder / rel, f"(window.MB_DATA=window.MB_DATA||{{}})[{json.dumps(name)}]={body};\n")
    return rel


def _num(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    f = float(v)
    return round(f, 4) if np.isfinite(f) else None


class Loaded:
    """An SAE entry with its weights, store and tokenizer loaded once."""

    def __init__(self, entry: SAEEntry):
        from transformers import AutoTokenizer

        self.entry = entry
        self.sae = load_sae(entry.folder / "sae")
        self.store = ActivationStore(entry.store)
        self.tokenizer = AutoTokenizer.from_pretrained(entry.store / "tokenizer")
        self.own = heldout_reading(self.store, self.sae)

    def details(self) -> list[dict[str, Any]]:
        f = self.entry.folder / EVAL_RESULTS
        return read_json(f)["eval_result_details"] if f.is_file() else []


def view_reading(loaded: Loaded, view: View) -> tuple[Reading, Reading]:
    """(base model, the view's model) at the view's held-out corpus tokens."""
    rep = ReplayedRows(view.rows)
    st = loaded.store
    held = np.flatnonzero((rep.rows >= st.n_train) & (rep.rows < st.n_train + st.n_heldout))
    rows = rep.rows[held]
    return Reading(st, rows, st.rows(rows), loaded.sae), Reading(st, rows, rep.acts(held), loaded.sae)


def _view_arrays(view: View) -> dict[str, np.ndarray]:
    out = {}
    for name, folder, f in (
        ("t", view.transfer, "freq_t.npy"),
        ("p", view.transfer, "freq_p.npy"),
        ("cos", view.finetune, "decoder_cosine.npy"),
    ):
        if folder is not None and (folder / f).is_file():
            out[name] = np.load(folder / f)
    return out


def shown_views(entry: SAEEntry) -> list[View]:
    """The base SAE's views of its lowest seed (every task and method)."""
    if not entry.views:
        return []
    s = min(v.seed for v in entry.views)
    return sorted((v for v in entry.views if v.seed == s), key=lambda v: (v.task, v.method))


def latent_table(loaded: Loaded) -> dict[str, Any]:
    """Columns and one row per latent (the SAE's own held-out density first)."""
    e, dens = loaded.entry, loaded.own.density()
    if e.kind == "fresh":
        det = {d["feature"]: d for d in loaded.details()}
        cols = ["latent", *FRESH_COLUMNS]
        rows = [[i, _num(dens[i])] + [_num(det.get(i, {}).get(c)) for c in FRESH_COLUMNS[1:]] for i in range(len(dens))]
        return {"columns": cols, "rows": rows}
    views = shown_views(e)
    arrays = [_view_arrays(v) for v in views]
    concept = {i: [t for t, ids in e.concepts.items() if i in ids] for i in range(len(dens))}
    cols = ["latent", "density", "concept_of"]
    for v in views:
        cols += [f"{v.task}/{v.method}: freq change", f"{v.task}/{v.method}: decoder cos"]
    rows = []
    for i in range(len(dens)):
        row: list[Any] = [i, _num(dens[i]), ", ".join(concept[i])]
        for a in arrays:
            row += [_num(a["t"][i]) if "t" in a else None, _num(a["cos"][i]) if "cos" in a else None]
        rows.append(row)
    return {"columns": cols, "rows": rows}


def pick_latents(loaded: Loaded, cfg: BrowseConfig) -> list[int]:
    """Which latents get a page: half the most interpretable (fresh) or most changed (base), the concept
    latents, the rest a seeded random sample of the alive latents."""
    dens = loaded.own.density()
    alive = [i for i in range(len(dens)) if dens[i] > 0]
    first: list[int] = []
    if loaded.entry.kind == "fresh":
        det = [d for d in loaded.details() if d.get("interpretable")]
        first = [d["feature"] for d in sorted(det, key=lambda d: -(d.get("ms_score") or 0))]
    else:
        change = np.zeros(len(dens))
        for v in shown_views(loaded.entry):
            if "t" in (a := _view_arrays(v)):
                change = np.maximum(change, np.abs(a["t"]))
        first = [int(i) for i in np.argsort(-change, kind="stable") if change[i] > 0]
        first = sorted({i for ids in loaded.entry.concepts.values() for i in ids}) + first
    chosen = list(dict.fromkeys(first[: max(1, cfg.max_latents // 2)]))
    rest = [i for i in np.random.default_rng(cfg.seed).permutation(alive).tolist() if i not in chosen]
    return sorted(chosen + rest[: cfg.max_latents - len(chosen)])


def contexts(reading: Reading, latent: int, tok, cfg: BrowseConfig, n: int | None = None) -> list[dict]:
    return reading.top_contexts(latent, tok, n or cfg.top_contexts, cfg.context_before, cfg.context_after)


def latent_page(loaded: Loaded, latent: int, cfg: BrowseConfig, tokens: list[str], side: list[dict]) -> dict:
    r, tok = loaded.own, loaded.tokenizer
    z = r.z[:, latent]
    return {
        "sae": loaded.entry.key,
        "latent": latent,
        "density": _num(float((z > 0).double().mean())) if len(z) else None,
        "top": contexts(r, latent, tok, cfg),
        "random": r.random_contexts(latent, tok, cfg.random_contexts, cfg.context_before, cfg.context_after, cfg.seed),
        "histogram": r.histogram(latent, cfg.histogram_bins),
        "decoder_tokens": tokens,
        "side_by_side": side,
    }


def base_side_by_side(loaded: Loaded, latents: list[int], cfg: BrowseConfig) -> dict[int, list[dict]]:
    """Per latent: the base model and every shown view's model at the same tokens."""
    out: dict[int, list[dict]] = {i: [] for i in latents}
    views = shown_views(loaded.entry)
    if not views:
        return out
    base_r = view_reading(loaded, views[0])[0]
    for i in latents:
        out[i].append(
            {
                "model": "base model",
                "rate": _num((base_r.z[:, i] > 0).double().mean()),
                "top": contexts(base_r, i, loaded.tokenizer, cfg, 5),
            }
        )
    for v in views:
        model_r = view_reading(loaded, v)[1]
        arrays = _view_arrays(v)
        for i in latents:
            out[i].append(
                {
                    "model": f"{v.method} ({v.task}, seed {v.seed})",
                    "rate": _num((model_r.z[:, i] > 0).double().mean()),
                    "freq_change": _num(arrays["t"][i]) if "t" in arrays else None,
                    "p": _num(arrays["p"][i]) if "p" in arrays else None,
                    "decoder_cos": _num(arrays["cos"][i]) if "cos" in arrays else None,
                    "top": contexts(model_r, i, loaded.tokenizer, cfg, 5),
                }
            )
    return out


def fresh_side_by_side(loaded: Loaded, peers: list[Loaded], latents: list[int], cfg: BrowseConfig) -> dict[int, list]:
    """Per latent: the best-matching latent (decoder cosine) of each other model's fresh SAE, same task and seed."""
    out: dict[int, list[dict]] = {i: [] for i in latents}
    for peer in peers:
        for i, (j, cos) in zip(latents, best_matches(loaded.sae.W_dec.detach(), peer.sae.W_dec.detach(), latents)):
            out[i].append(
                {
                    "model": f"{peer.entry.method} (latent {j}, decoder cos {cos})",
                    "sae": peer.entry.key,
                    "latent": j,
                    "decoder_cos": cos,
                    "top": contexts(peer.own, j, peer.tokenizer, cfg, 5),
                }
            )
    return out


def decoder_tokens(loaded: Loaded, model_tok, latents: list[int], n: int) -> dict[int, list[str]]:
    from bench.proxies import mlp_output_tokens

    model, tok = model_tok
    dirs = loaded.sae.W_dec.detach()[latents].T.cpu()
    try:
        toks = mlp_output_tokens(model, tok, loaded.entry.layer, dirs, n_tokens=n)
    except (ValueError, RuntimeError) as e:  # not a Llama-style MLP, or the hook is not the MLP's hidden layer
        log.info("no decoder tokens for %s: %s", loaded.entry.key, e)
        return {i: [] for i in latents}
    return dict(zip(latents, toks))


def export_sae(site: Path, loaded: Loaded, peers: list[Loaded], model_tok, cfg: BrowseConfig) -> dict[str, Any]:
    """Write the SAE's table and latent pages; return its index entry."""
    e = loaded.entry
    latents = pick_latents(loaded, cfg)
    side = (
        base_side_by_side(loaded, latents, cfg) if e.kind == "base" else fresh_side_by_side(loaded, peers, latents, cfg)
    )
    toks = decoder_tokens(loaded, model_tok, latents, cfg.decoder_tokens)
    for i in latents:
        write_data(site, f"{e.key}/latent-{i}", latent_page(loaded, i, cfg, toks[i], side[i]))
    write_data(site, f"{e.key}/table", latent_table(loaded) | {"exported": latents})
    with torch.no_grad():
        n_alive = int((loaded.own.z != 0).any(0).sum()) if len(loaded.own.z) else 0
    return e.index_entry(
        d_sae=int(loaded.sae.cfg.d_sae), n_alive=n_alive, n_heldout=int(len(loaded.own.rows)), exported=latents
    )
