"""How many seeds a comparison needs: ``python -m bench power DIR --effect 0.02`` (from stored runs only).

For every paired comparison the report makes — each method − DPO and each method − base, per task and headline
metric — the per-seed spread sd of the differences d_s (``bench.leaderboard.paired_differences``) gives:

- ``mde``: the smallest |δ| a two-sided paired t-test at α = 0.05 detects with 80 % power at the folder's
  seeds (``bench.core.stats.mde_paired``), so "no difference" reads "smaller than mde";
- ``seeds_needed``: the fewest seeds n (2 ≤ n ≤ 200) with mde(sd, n) ≤ ``--effect`` (">200" when none).

sd estimated from few seeds is itself noisy (with 3 seeds its 95 % interval spans about 0.5–6× the true
value), so these are planning numbers. Held-out items: d_s also carries item-sampling noise; k times more
items shrink at most that part of sd² by k (training randomness stays), so more items can lower the seeds
needed but never below what seed-to-seed training variance alone requires.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.core.io import write_csv
from bench.core.stats import mde_paired
from bench.figures import ordered_methods
from bench.leaderboard import paired_differences
from bench.report_stats import paired_metrics

MAX_SEEDS = 200


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Fewest seeds n ≥ 2 whose paired-t MDE at spread ``sd`` is ≤ ``effect`` (inf beyond ``MAX_SEEDS``)."""
    if not math.isfinite(sd) or sd == 0 or effect <= 0:  # sd = 0: no observed spread to plan with
        return math.nan
    lo, hi = 2, MAX_SEEDS
    if mde_paired(sd, hi, alpha, power) > effect:
        return math.inf
    while lo < hi:  # mde decreases with n
        mid = (lo + hi) // 2
        if mde_paired(sd, mid, alpha, power) <= effect:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def power_table(board: pd.DataFrame, effect: float) -> pd.DataFrame:
    """One row per (comparison, task, metric): seeds, mean difference, sd, MDE, seeds needed for ``effect``."""
    metrics = paired_metrics(board)
    methods = set(board["method"])
    frames = []
    for control in ("dpo", "base"):
        if control not in methods:
            continue
        for m in ordered_methods(methods - {control, "base"}):
            d = paired_differences(board, metrics, treatment=m, control=control)
            if d is not None:
                frames.append(d.assign(comparison=f"{m} − {control}"))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["effect"] = effect
    out["seeds_needed"] = [seeds_needed(sd, effect) for sd in out["sd"]]
    cols = ["comparison", "model", "task", "metric", "n_seeds", "diff", "sd", "mde", "effect", "seeds_needed"]
    return out[cols]


def write_power(out: Path, effect: float) -> tuple[Path, pd.DataFrame]:
    board = pd.read_csv(Path(out) / "leaderboard.csv")
    table = power_table(board, effect)
    path = Path(out) / "power.csv"
    write_csv(path, table)
    return path, table
