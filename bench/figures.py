"""Figures of a results folder, drawn from stored tables only (never from a model).

Each figure function takes the tables it needs and returns a matplotlib ``Figure`` built with the
object API (no pyplot, no global style or backend), or raises ``MissingData`` saying what is absent.
``bench/report.py`` saves them under ``<out>/figures/`` and turns the reasons into report lines.

The paper's Figs. 3–7 are in ``bench.paper.figures``, built on the helpers here; the report's list of
figures is ``bench.figure_specs.FIGURES``.

- ``align_score_bars``: align_score per task and method (Table 2 as bars).
- ``sae_fractions``: shares of alive SAE latents that are interpretable, decorrelated, or both.

Bands and error bars are 95 % t intervals across seeds, as in ``leaderboard_seeds.csv``; with one
seed there are none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bench.core.stats import t_interval
from bench.methods import METHODS, ordered

MARKERS = ("o", "v", "s", "^", "D", "P", "X", "*")
SAE_FRACTIONS = {
    "sae_frac_interpretable": "interpretable",
    "sae_frac_decorrelated": "decorrelated",
    "sae_frac_interp_decor": "interpretable ∧\ndecorrelated",
}
DEPTH_LABEL = "relative depth, layer / (L − 1)"


class MissingData(LookupError):
    """The stored tables lack what a figure needs; the message says what is missing."""


def ordered_methods(methods) -> list[str]:
    """The methods present, in the registry's display order (unregistered ones last, alphabetically)."""

    return ordered(set(methods))


def method_label(method: str) -> str:

    return METHODS[method].label if method in METHODS else method


def method_style(methods: Sequence[str]) -> dict[str, tuple]:
    """method → (label, colour, marker); fixed per method so every figure uses the same colours."""

    known = ordered(set(METHODS) | set(methods))
    colours = sns.color_palette("colorblind", len(known))
    return {m: (method_label(m), colours[known.index(m)], MARKERS[known.index(m) % len(MARKERS)]) for m in methods}


def panel_names(df: pd.DataFrame) -> pd.Series:
    """Panel title per row: the task, or "model · task" when the table holds several models."""
    if df["model"].nunique() > 1:
        return df["model"].astype(str) + " · " + df["task"].astype(str)
    return df["task"].astype(str)


def _grid(
    n_cols: int,
    n_rows: int = 1,
    w: float = 4.4,
    h: float = 3.4,
    sharey: bool | Literal["none", "all", "row", "col"] = "row",
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of n_rows × n_cols axes (always a 2-D array), y shared along rows."""
    fig = Figure(figsize=(w * n_cols, h * n_rows + 0.9), layout="constrained", dpi=110)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=sharey)
    return fig, axes


def _panel_grid(n: int, max_cols: int = 3, **kw) -> tuple[Figure, np.ndarray, list]:
    """n panels wrapped into rows of at most ``max_cols``; returns (figure, axes array, the n used axes)."""
    cols = min(n, max_cols)
    fig, axes = _grid(cols, -(-n // cols), **({"sharey": True} | kw))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes, list(axes.flat[:n])


def _finish(fig: Figure, axes: np.ndarray, title: str, handles: list) -> Figure:
    """Title, one legend below the panels, y labels only on the first column (y is shared along rows)."""
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")
    fig.suptitle(title)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), frameon=False)
    return fig


def _method_handles(style: dict[str, tuple], line: bool = True) -> list:
    if line:
        return [Line2D([], [], color=c, marker=mk, label=lab) for lab, c, mk in style.values()]
    return [Patch(facecolor=c, label=lab) for lab, c, _ in style.values()]


def _lines(ax, df: pd.DataFrame, x: str, y: str, style: dict[str, tuple]) -> None:
    """One line per method (mean over seeds) with a 95 % t band."""
    methods = [m for m in style if m in set(df["method"])]
    sns.lineplot(
        data=df,
        x=x,
        y=y,
        hue="method",
        hue_order=methods,
        style="method",
        style_order=methods,
        palette={m: style[m][1] for m in methods},
        markers={m: style[m][2] for m in methods},
        dashes=False,
        errorbar=t_interval,
        legend=False,
        ax=ax,
    )


def layer_rows(tidy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-layer rows of ``metric`` (no SAE) with ``rel_depth`` = layer / (L − 1), L per model."""
    d = tidy[(tidy["metric"] == metric) & tidy["layer"].notna() & tidy["sae"].isna()].copy()
    if d.empty:
        return d
    depth = d.groupby("model")["layer"].transform("max")
    d["rel_depth"] = d["layer"] / depth.clip(lower=1)
    d["panel"] = panel_names(d)
    return d


def _hook_depths(board: pd.DataFrame, tidy: pd.DataFrame) -> dict[str, float]:
    """panel → relative depth of the regularised (hook) layer, when the leaderboard says."""
    if "hook_layer" not in board or board["hook_layer"].isna().all():
        return {}
    last = tidy[tidy["layer"].notna()].groupby("model")["layer"].max()
    b = board.dropna(subset=["hook_layer"]).assign(panel=lambda f: panel_names(f))
    b = b[b["model"].isin(last.index)]
    return {
        p: float(g["hook_layer"].iloc[0]) / max(1.0, float(last[g["model"].iloc[0]])) for p, g in b.groupby("panel")
    }


def _hook_line(ax, depths: dict[str, float], panel: str) -> bool:
    if panel not in depths:
        return False
    ax.axvline(depths[panel], color="0.45", linestyle="--", linewidth=1)
    return True


def mean_ci(df: pd.DataFrame, by: list[str], col: str) -> pd.DataFrame:
    """Per group: mean, 95 % t interval (lo, hi) and n of ``col`` across rows (seeds)."""
    rows = []
    for key, g in df.dropna(subset=[col]).groupby(by, sort=False):
        lo, hi = t_interval(g[col])
        rows.append(
            dict(zip(by, key if isinstance(key, tuple) else (key,)))
            | {"mean": g[col].mean(), "lo": lo, "hi": hi, "n": len(g), "values": g[col].tolist()}
        )
    return pd.DataFrame(rows, columns=by + ["mean", "lo", "hi", "n", "values"])


def _grouped_bars(ax, stats: pd.DataFrame, x: str, x_order: list[str], style: dict[str, tuple]) -> None:
    """Bars of ``mean`` at each x, one per method; 95 % CI error bars and seed dots with ≥ 2 seeds."""
    methods = [m for m in style if m in set(stats["method"])]
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        s = stats[stats["method"] == m].set_index(x).reindex(x_order)
        pos = np.arange(len(x_order)) - 0.4 + width * (i + 0.5)
        ax.bar(pos, s["mean"], width * 0.92, color=style[m][1], label=style[m][0])
        multi = s["n"].fillna(0) >= 2
        if multi.any():
            err = np.vstack([s["mean"] - s["lo"], s["hi"] - s["mean"]])[:, multi.to_numpy()]
            ax.errorbar(
                pos[multi.to_numpy()], s["mean"][multi], yerr=err, fmt="none", ecolor="0.15", elinewidth=1, capsize=2.5
            )
            for p, vals in zip(pos[multi.to_numpy()], s["values"][multi]):
                ax.plot([p] * len(vals), vals, "o", color="0.15", markersize=2.5, alpha=0.7)
    ax.set_xticks(np.arange(len(x_order)), x_order)


def _share_ylim(axes: np.ndarray, stats: pd.DataFrame) -> None:
    """0–1 (the metrics are shares), widened to show every error bar; the same on all panels."""
    lo = np.nanmin(np.r_[stats["lo"].to_numpy(float), 0.0])
    hi = np.nanmax(np.r_[stats["hi"].to_numpy(float), stats["mean"].to_numpy(float), 1.0])
    for ax in axes.flat:
        ax.set_ylim(lo - 0.03 * (hi - lo) if lo < 0 else 0, hi + 0.04 * (hi - lo))


def align_score_bars(board: pd.DataFrame) -> Figure:
    """align_score per task (x) and method (bars), mean over seeds with 95 % t CI (Table 2 as bars)."""
    if "align_score" not in board or board["align_score"].isna().all():
        raise MissingData("leaderboard.csv has no `align_score` column (eval stage)")
    b = board.assign(panel=panel_names(board))
    stats = mean_ci(b, ["panel", "method"], "align_score")
    style = method_style(ordered_methods(stats["method"]))
    panels = sorted(stats["panel"].unique())
    fig, axes = _grid(1, w=max(5.5, 1.0 + 0.45 * len(style) * len(panels)), h=3.8)
    ax = axes[0, 0]
    _grouped_bars(ax, stats, "panel", panels, style)
    ax.set_xticks(ax.get_xticks(), [p.replace(" · ", "\n") for p in panels])
    _share_ylim(axes, stats)
    ax.set(xlabel="task", ylabel="align_score (share of held-out\nitems judged aligned, 0–1)")
    n = int(board.groupby(["model", "task", "method"])["seed"].nunique().max())
    title = "Alignment score by task and method" + (f" (mean of {n} seeds, 95 % CI)" if n > 1 else "")
    return _finish(fig, axes, title, _method_handles(style, line=False))


def sae_fractions(board: pd.DataFrame) -> Figure:
    """Shares of alive SAE latents that are interpretable, decorrelated, or both; per method and task."""
    cols = [c for c in SAE_FRACTIONS if c in board and board[c].notna().any()]
    if not cols:
        raise MissingData(f"leaderboard.csv has none of {', '.join(SAE_FRACTIONS)} (sae stage)")
    long = board.assign(panel=panel_names(board)).melt(
        id_vars=["panel", "method", "seed"], value_vars=cols, var_name="kind", value_name="share"
    )
    long["kind"] = long["kind"].map(SAE_FRACTIONS)
    stats = mean_ci(long, ["panel", "method", "kind"], "share")
    style = method_style(ordered_methods(stats["method"]))
    panels = sorted(stats["panel"].unique())
    kinds = [SAE_FRACTIONS[c] for c in cols]
    fig, axes, used = _panel_grid(len(panels), w=max(4.4, 0.22 * len(style) * len(kinds) + 1.2), h=3.6)
    for ax, p in zip(used, panels):
        _grouped_bars(ax, stats[stats["panel"] == p], "kind", kinds, style)
        ax.set(title=p, xlabel="SAE latents that are …", ylabel="share of alive latents (0–1)")
    _share_ylim(axes, stats)
    return _finish(
        fig, axes, "SAE latents: interpretable vs decorrelated, by method", _method_handles(style, line=False)
    )
