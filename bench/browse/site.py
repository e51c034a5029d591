"""Write the browser site: the catalog of SAEs, their exported data and the static pages (``bench.browse``)."""

from __future__ import annotations

import logging
import shutil
import time
from importlib import resources
from pathlib import Path

from bench.browse.catalog import SAEEntry, catalog
from bench.browse.config import BrowseConfig
from bench.browse.export import Loaded, export_sae, write_data
from bench.core.errors import StoreError

log = logging.getLogger(__name__)
ASSETS = ("index.html", "sae.html", "latent.html", "browse.js", "browse.css")


def _model(entry: SAEEntry, cache: dict):
    from bench.models import load_model

    seed = entry.seed if entry.model.startswith("tiny:") else 0
    if (entry.model, seed) not in cache:
        cache[(entry.model, seed)] = load_model(entry.model, seed=seed, device="cpu")
    return cache[(entry.model, seed)]


def write_site(out: Path, cfg: BrowseConfig | None = None) -> Path:
    """Write ``out/browse/`` from the stored runs of ``out``; returns its ``index.html``."""
    out = Path(out)
    cfg = cfg or BrowseConfig()
    entries = catalog(out)
    if not entries:
        raise StoreError(f"no SAE in {out}: no job record names an sae or base_sae stage")
    site = out / "browse"
    shutil.rmtree(site / "data", ignore_errors=True)
    for name in ASSETS:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text((resources.files("bench.browse") / "assets" / name).read_text(encoding="utf-8"))
    models: dict = {}
    loaded: dict[str, Loaded] = {e.key: Loaded(e) for e in entries if e.available}
    index = []
    for e in entries:
        if e.key not in loaded:
            index.append(e.index_entry(unavailable=True))
            continue
        peers = [
            loaded[p.key]
            for p in entries
            if p.kind == "fresh" == e.kind
            and p.key != e.key
            and p.key in loaded
            and (p.task, p.seed, p.layer) == (e.task, e.seed, e.layer)
        ]
        index.append(export_sae(site, loaded[e.key], peers, _model(e, models), cfg))
        log.info("browse: exported %s", e.label())
    write_data(site, "index", {"folder": str(out), "generated": time.strftime("%Y-%m-%d %H:%M"), "saes": index})
    return site / "index.html"
