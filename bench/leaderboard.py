"""Render ``leaderboard.csv`` and ``metrics.csv`` from stored runs, for one or many result folders.

- ``metrics.csv``: tidy long form, one row per (model, task, method, seed, layer, sae, metric, value).
- ``leaderboard.csv``: one row per (model, task, method, seed); a column per metric, taking records
  without a layer or at the job's regularised (hook) layer. Identity columns: ``suite, model, task,
  method, seed, config_hash, monobench_version, hook_layer``.
- ``sae_grid.csv`` (only when a suite trains more SAEs than the primary: ``[sae] layers`` / ``variants``, see
  ``saes.grid``): one row per (model, task, method, seed, layer, sae), a column per SAE metric, the primary
  included.
- ``leaderboard_seeds.csv`` (only with ≥ 2 seeds): per (model, task, method) the mean, and the
  half-width of the 95 % t confidence interval (``<metric>_ci95``) across seeds.

Nothing here knows a metric by name: a new stage's records appear as new columns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.io import read_json, write_csv
from bench.core.stats import holm, mde_paired, paired_test, t_half_width
from bench.methods import ordered
from bench.schema import metrics
from bench.store import Store

ID_COLS = ["suite", "model", "task", "method", "seed", "config_hash", "monobench_version", "hook_layer"]
TIDY_COLS = ["suite", "model", "task", "method", "seed", "layer", "sae", "metric", "value"]


def tidy_metrics(dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy metrics, job table) over every job record found in ``dirs``; later dirs win on duplicates."""
    rows, jobs = [], {}
    for d in dirs:
        store = Store(d)
        for job in store.job_records():
            ident = (job["model"], job["task"], job["method"], job["seed"])
            jobs[ident] = {c: job[c] for c in ID_COLS} | {"_dir": str(d), "_stages": job["stages"]}
    for job in jobs.values():
        store = Store(Path(job["_dir"]))
        for key in job["_stages"].values():
            f = store.path(key) / "metrics.json"
            if not f.is_file():
                continue  # stage not finished (e.g. a shard still running)
            for r in read_json(f):
                rows.append(
                    {c: job[c] for c in ("suite", "model", "task", "method", "seed")}
                    | {
                        "layer": r.get("layer"),
                        "sae": r.get("sae"),
                        "metric": r["metric"],
                        "value": r["value"],
                        "_hook": job["hook_layer"],
                        "_head": bool(r.get("head", True)),
                    }
                )
    tidy = pd.DataFrame(rows, columns=TIDY_COLS + ["_hook", "_head"])
    table = pd.DataFrame([{c: j[c] for c in ID_COLS} for j in jobs.values()], columns=ID_COLS)
    return tidy, table


def leaderboard(tidy: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One row per job; metric columns in the order the metric sets declare them (``bench/schema.py``)."""
    if tidy.empty:
        return table.copy()

    head = tidy[(tidy["layer"].isna() | (tidy["layer"] == tidy["_hook"])) & tidy["_head"].astype(bool)]
    known = [m.name for m in metrics()]
    # stable column order: the registry's order, then any other metric alphabetically
    order = [m for m in known if m in set(head["metric"])] + sorted(set(head["metric"]) - set(known))
    wide = head.pivot_table(
        index=["model", "task", "method", "seed"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    board = table.merge(wide, on=["model", "task", "method", "seed"], how="left")

    rank = {m: i for i, m in enumerate(ordered(set(board["method"])))}
    board = (
        board.assign(_m=board["method"].map(rank))
        .sort_values(["model", "task", "_m", "seed"], kind="stable")
        .drop(columns="_m")
    )
    return board[ID_COLS + [c for c in order if c in board.columns]].reset_index(drop=True)


def sae_grid(tidy: pd.DataFrame) -> pd.DataFrame | None:
    """Every SAE of every job, one row per (model, task, method, seed, layer, sae) and a column per metric of
    the ``sae`` stage's SAEs (``SAEMetrics``), when any job trained more than its primary SAE; else None."""
    if tidy.empty or tidy["_head"].astype(bool).all():
        return None
    names = [m.name for m in metrics() if m.group == "sae"]
    rows = tidy[tidy["metric"].isin(names) & tidy["sae"].notna()]
    wide = rows.pivot_table(
        index=["model", "task", "method", "seed", "layer", "sae"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    return wide[[*wide.columns[:6], *(m for m in names if m in wide.columns)]]


def seed_summary(board: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and 95 % CI half-width (t distribution, n−1 dof) across seeds; None with fewer than 2 seeds.

    ``n_seeds`` counts the group's rows; each metric's mean and interval use only its non-empty seeds."""
    if board.empty or board["seed"].nunique() < 2:
        return None
    metrics = [c for c in board.columns if c not in ID_COLS]
    out = []
    for (model, task, method), g in board.groupby(["model", "task", "method"], sort=False):
        row = {"suite": g["suite"].iloc[0], "model": model, "task": task, "method": method, "n_seeds": len(g)}
        for m in metrics:
            v = g[m].dropna().to_numpy(float)
            row[m] = float(v.mean()) if len(v) else np.nan
            row[f"{m}_ci95"] = t_half_width(v)
        out.append(row)
    return pd.DataFrame(out)


def paired_differences(
    board: pd.DataFrame, metrics: list[str], treatment: str = "decpo", control: str = "dpo"
) -> pd.DataFrame | None:
    """treatment − control per (model, task, metric), paired by seed (both share that seed's data).

    d_s = x_treatment,s − x_control,s. Per row: n (seeds with both values), the mean d̄ and its 95 % t
    half-width, whether that interval excludes 0, the paired t-test's p and its Holm adjustment across
    the rows of the comparison (``p_holm``; ``significant`` = p_holm ≤ 0.05), ``noisy`` when the per-seed
    spread sd(d) exceeds |d̄|, and ``mde``, the smallest difference 80 % power would detect at these
    seeds and this spread (``bench.core.stats.mde_paired``). Differences that are all equal (sd = 0) have no
    MDE and never set ``ci_excludes_0`` or ``significant``; when they are not 0 they have no t-test either (p
    and p_holm NaN, left out of the Holm family; ``no_spread`` marks them); all 0 gives p = 1. None when no
    (model, task) has both methods on at least 2 common seeds.
    """
    rows = []
    for (model, task), g in board.groupby(["model", "task"], sort=False):
        t = g[g["method"] == treatment].set_index("seed")
        c = g[g["method"] == control].set_index("seed")
        for m in metrics:
            if m not in g:
                continue
            r = paired_test((t[m] - c[m]).dropna().to_numpy(float))
            if r["n"] < 2:
                continue
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "metric": m,
                    "n_seeds": r["n"],
                    "diff": r["mean"],
                    "diff_ci95": r["half"],
                    "ci_excludes_0": bool(r["sd"] > 0 and abs(r["mean"]) > r["half"]),
                    "p": r["p"],
                    "sd": r["sd"],
                    "noisy": bool(r["sd"] > abs(r["mean"])),
                    "no_spread": bool(r["sd"] == 0 and math.isnan(r["p"])),
                    "mde": mde_paired(r["sd"], r["n"]),
                }
            )
    if not rows:
        return None
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].tolist())
    out["significant"] = out["p_holm"] <= 0.05
    return out


def write_leaderboard(out: Path, sources: list[Path] | None = None) -> pd.DataFrame:
    """Write the CSVs into ``out`` from the runs of ``sources`` (default: ``out`` itself)."""
    sources = sources or [out]
    tidy, table = tidy_metrics([Path(s) for s in sources])
    board = leaderboard(tidy, table)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "metrics.csv", tidy[TIDY_COLS])
    write_csv(out / "leaderboard.csv", board)
    for name, table in (("sae_grid.csv", sae_grid(tidy)), ("leaderboard_seeds.csv", seed_summary(board))):
        if table is not None:
            write_csv(out / name, table)
        else:
            (out / name).unlink(missing_ok=True)  # none from an earlier render may describe other runs
    return board
