"""Which SAEs a results folder holds, read from its job records (nothing is recomputed).

- **fresh** SAEs: one per job (``sae`` stage), trained on the task's token set of that job's model; its latents
  carry the scores of ``eval_results.json`` (density, MS score and null, verdicts, max correlation, partner).
- **base** SAEs: one per (base model, layer, ``[sae_base]``) (``base_sae`` stage), with one *view* per job:
  the job's model read at the same held-out corpus tokens (``model_rows``), its frequency-change test
  (``sae_transfer``) and the decoder cosine of its fine-tune (``sae_ft``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.io import read_json, read_records


@dataclass
class View:
    """One job's reading of a base SAE."""

    task: str
    method: str
    seed: int
    rows: Path
    transfer: Path | None
    finetune: Path | None


@dataclass
class SAEEntry:
    key: str
    kind: str
    """``fresh`` or ``base``."""
    folder: Path
    store: Path
    model: str
    layer: int
    scores: dict[str, float]
    task: str = ""
    method: str = ""
    seed: int = 0
    views: list[View] = field(default_factory=list)
    concepts: dict[str, list[int]] = field(default_factory=dict)
    """task → concept latents (base SAEs; from ``concept_latents``)."""

    @property
    def available(self) -> bool:
        """Weights and activations present (they are not committed with results/ folders)."""
        return (self.folder / "sae" / "cfg.json").is_file() and (self.store / "acts.npy").is_file()

    def index_entry(self, **extra: Any) -> dict[str, Any]:
        """The SAE's row of the browser's index (``extra``: what its export adds)."""
        keys = ("kind", "task", "method", "seed", "layer")
        return {"id": self.key, "label": self.label(), **{k: getattr(self, k) for k in keys}} | {
            "scores": headline_scores(self.scores),
            **extra,
        }

    def label(self) -> str:
        if self.kind == "base":
            return f"base SAE · layer {self.layer}"
        return f"{self.task} · {self.method} · seed {self.seed} · layer {self.layer}"


HEADLINE = {
    "explained variance": ("sae_explained_variance", "sae_base_explained_variance"),
    "dead frac": ("sae_dead_frac", "sae_base_dead_frac"),
    "L0": ("sae_l0", "sae_base_l0"),
    "interpretable": ("sae_frac_interpretable",),
    "decorrelated": ("sae_frac_decorrelated",),
    "CE score": ("sae_ce_score", "sae_base_ce_score"),
}
"""The index's columns: each the first of its leaderboard columns the SAE has."""


def headline_scores(scores: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, cols in HEADLINE.items():
        if present := [c for c in cols if c in scores]:
            out[name] = scores[present[0]]
    return out


def _clean(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _row_scores(board: pd.DataFrame, job: dict[str, Any], prefix: str) -> dict[str, float]:
    row = board[(board["task"] == job["task"]) & (board["method"] == job["method"]) & (board["seed"] == job["seed"])]
    if row.empty:
        return {}
    r = row.iloc[0]
    return {c: v for c in board.columns if c.startswith(prefix) and (v := _clean(r[c])) is not None}


def catalog(out: Path) -> list[SAEEntry]:
    """Every SAE of the folder ``out``: fresh ones in job order, then the base SAEs."""
    out = Path(out)
    board = pd.read_csv(out / "leaderboard.csv") if (out / "leaderboard.csv").is_file() else pd.DataFrame()
    jobs = read_records(out / "jobs")
    runs = out / "runs"
    fresh: list[SAEEntry] = []
    base: dict[str, SAEEntry] = {}
    for job in sorted(jobs, key=lambda j: (j["task"], j["seed"], j["method"])):
        st = job.get("stages", {})
        scores = _row_scores(board, job, "sae_") if not board.empty else {}
        if "sae" in st and "acts" in st:
            fresh.append(
                SAEEntry(
                    st["sae"],
                    "fresh",
                    runs / st["sae"],
                    runs / st["acts"],
                    job["model"],
                    int(job["hook_layer"]),
                    {
                        k: v
                        for k, v in scores.items()
                        if not k.startswith(("sae_base", "sae_transfer", "sae_drift", "sae_ft"))
                    },
                    job["task"],
                    job["method"],
                    int(job["seed"]),
                )
            )
        if "base_sae" in st and "corpus_acts" in st:
            entry = base.setdefault(
                st["base_sae"],
                SAEEntry(
                    st["base_sae"],
                    "base",
                    runs / st["base_sae"],
                    runs / st["corpus_acts"],
                    job["model"],
                    int(job["hook_layer"]),
                    {k: v for k, v in scores.items() if k.startswith("sae_base")},
                ),
            )
            if "model_rows" in st:
                entry.views.append(
                    View(
                        job["task"],
                        job["method"],
                        int(job["seed"]),
                        runs / st["model_rows"],
                        runs / st["sae_transfer"] if "sae_transfer" in st else None,
                        runs / st["sae_ft"] if "sae_ft" in st else None,
                    )
                )
            concepts = runs / st.get("concept_latents", "-") / "concept_latents.json"
            if concepts.is_file():
                entry.concepts[job["task"]] = read_json(concepts)["latents"]
    return fresh + list(base.values())
