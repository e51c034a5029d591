"""The paper's Figs. 3–7 (Yan et al. 2024), drawn from a results folder's stored tables only.

- Fig. 3 ``proxy_change_by_depth``: relative change (DPO − base)/|base| of a neuron proxy per layer,
  paired by seed. The paper scores median(‖w_in‖·b_in) over the 100 neurons whose input weights changed
  most; that needs an MLP input bias (GPT-2 family: our ``weight_proxy``, over all neurons of the layer,
  not the 100 most changed). SmolLM2 and Llama have no such bias, so the figure also plots the
  activation-based analogue, the relative change of ``act_variance``.
- Fig. 4 ``decorrelation_by_depth``: decorrelation against relative depth for base / DPO / DecPO, one row
  per read-out: ``decorrelation_prompt`` (the paper's: last token of the prompt alone) and
  ``decorrelation`` (ours: EOS after prompt + chosen reply, the token DecPO regularises).
- Fig. 5 ``decorrelation_over_training``: decorrelation at the regularised layer over training steps
  (the curve's prompt + chosen read-out), DPO vs both DecPO forms.
- Fig. 6 ``act_variance_diff``: act_variance(method) − act_variance(DPO) per layer, same seed.
- Fig. 7 ``reward_margin_over_training``: reward margin on training and held-out pairs over steps.

Bands are 95 % t intervals across seeds; with one seed there are none.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.figures import (
    DEPTH_LABEL,
    MissingData,
    _finish,
    _grid,
    _hook_depths,
    _hook_line,
    _lines,
    _method_handles,
    _panel_grid,
    layer_rows,
    method_style,
    ordered_methods,
    panel_names,
)

PAPER_METHODS = ("base", "dpo", "decpo", "decpo_paper")
"""The methods the paper's depth and training figures compare (base / DPO / DecPO, both DecPO forms)."""
DECPO_FORMS = ("decpo", "decpo_paper")
FIG3_PROXIES = {
    "weight_proxy": "weight proxy median‖w_in‖·b_in (bias models)",
    "act_variance": "act_variance (activation analogue)",
}
READOUTS = (
    ("decorrelation_prompt", "prompt's last token\n(the paper's read-out)"),
    ("decorrelation", "EOS after prompt + reply\n(ours, DecPO's token)"),
)
CURVE_STEP = ("step", "global_step", "train/global_step")
DECOR_CURVE = ("proxy/decorrelation", "decorrelation", "proxies/decorrelation")
MARGIN_CURVES = (
    (
        "reward margin, training pairs\n(β · log-ratio difference, nats)",
        ("train/reward_margin", "trainer/reward_margin"),
    ),
    ("reward margin, held-out pairs\n(β · log-ratio difference, nats)", ("eval/reward_margin", "eval_rewards/margins")),
)


def _wide(tidy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-layer ``metric`` with one column per method, rows (model, task, seed, layer)."""
    d = layer_rows(tidy, metric)
    if d.empty:
        return d
    keys = ["model", "task", "seed", "layer", "rel_depth", "panel"]
    return d.pivot_table(index=keys, columns="method", values="value", aggfunc="first").reset_index()


def relative_change(tidy: pd.DataFrame, metric: str, treatment: str = "dpo", control: str = "base") -> pd.DataFrame:
    """Per (model, task, seed, layer): (x_treatment − x_control) / |x_control| of a per-layer metric."""
    w = _wide(tidy, metric)
    if w.empty or treatment not in w or control not in w:
        return pd.DataFrame(columns=["panel", "rel_depth", "value"])
    return w.assign(value=(w[treatment] - w[control]) / w[control].abs()).dropna(subset=["value"])


def _series_style(names: Sequence[str], labels: dict[str, str]) -> dict[str, tuple]:
    """Style of non-method series (proxy names), reusing the method palette's order for colours."""
    base = method_style(list(method_style(["dpo", "decpo", "l1", "sft"]))[: len(names)])
    return {n: (labels[n], c, mk) for n, (_, c, mk) in zip(names, base.values())}


def _depth_panels(d: pd.DataFrame, style: dict[str, tuple], board, tidy, ylabel: str, title: str, handles) -> Figure:
    """A panel per task of ``d`` (rows with panel, rel_depth, value, method): lines vs depth, y = 0 and the
    regularised layer marked."""
    panels = sorted(d["panel"].unique())
    hooks = _hook_depths(board, tidy)
    fig, axes, used = _panel_grid(len(panels))
    for ax, p in zip(used, panels):
        _lines(ax, d[d["panel"] == p], "rel_depth", "value", style)
        ax.axhline(0, color="0.2", linewidth=0.8)
        _hook_line(ax, hooks, p)
        ax.set(title=p, xlabel=DEPTH_LABEL, ylabel=ylabel)
    return _finish(fig, axes, title, handles)


def proxy_change_by_depth(tidy: pd.DataFrame, board: pd.DataFrame) -> Figure:
    """Fig. 3: (DPO − base)/|base| per layer of each available proxy; a line per proxy, a panel per task."""
    parts = {m: relative_change(tidy, m) for m in FIG3_PROXIES}
    parts = {m: d.assign(method=m) for m, d in parts.items() if not d.empty}
    if not parts:
        raise MissingData("needs per-layer `act_variance` (or `weight_proxy`) rows for base and DPO")
    d = pd.concat(parts.values(), ignore_index=True)
    style = _series_style(list(parts), FIG3_PROXIES)
    ylabel = "relative change after DPO\n(DPO − base) / |base|"
    title = "Fig. 3: relative change of neuron proxies after DPO, per layer"
    return _depth_panels(d, style, board, tidy, ylabel, title, _method_handles(style))


def decorrelation_by_depth(tidy: pd.DataFrame, board: pd.DataFrame) -> Figure:
    """Fig. 4: decorrelation vs relative depth, base / DPO / DecPO; a row per read-out, a column per task."""
    rows = [(m, label, d) for m, label in READOUTS if not (d := layer_rows(tidy, m)).empty]
    if not rows:
        raise MissingData("metrics.csv has no per-layer `decorrelation` rows (proxies stage)")
    present = set().union(*(set(d["method"]) for _, _, d in rows))
    style = method_style(ordered_methods(present & set(PAPER_METHODS)) or ordered_methods(present))
    panels = sorted(set().union(*(set(d["panel"]) for _, _, d in rows)))
    hooks = _hook_depths(board, tidy)
    fig, axes = _grid(len(panels), len(rows), h=3.2)
    for r, (metric, label, d) in enumerate(rows):
        for c, p in enumerate(panels):
            ax = axes[r, c]
            _lines(ax, d[d["panel"] == p], "rel_depth", "value", style)
            _hook_line(ax, hooks, p)
            ax.set(title=f"{p}: {metric}", xlabel=DEPTH_LABEL if r == len(rows) - 1 else "", ylabel=label)
    handles = _method_handles(style)
    if hooks:
        handles.append(Line2D([], [], color="0.45", linestyle="--", label="regularised layer"))
    return _finish(fig, axes, "Fig. 4: decorrelation (1 − mean cos) of MLP activations by depth", handles)


def _column(curves: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((c for c in names if c in curves and curves[c].notna().any()), None)


def _curve_grid(curves: pd.DataFrame, rows: list[tuple[str, str]], title: str, methods: Sequence[str]) -> Figure:
    """A row per (label, curve column), a column per task; a line per method of ``methods`` present."""
    step = _column(curves, CURVE_STEP)
    curves = curves[curves["method"].isin(methods)] if not curves.empty else curves
    if curves.empty or step is None or not rows:
        raise MissingData(f"no training curves of {', '.join(methods)} with a step column and {rows or 'the curve'}")
    curves = curves.assign(panel=panel_names(curves))
    style = method_style(ordered_methods(curves["method"]))
    panels = sorted(curves["panel"].unique())
    fig, axes = _grid(len(panels), len(rows), h=3.0)
    for r, (label, col) in enumerate(rows):
        for c, p in enumerate(panels):
            g = curves[curves["panel"] == p].dropna(subset=[step, col])
            if not g.empty:
                _lines(axes[r, c], g, step, col, style)
            axes[r, c].set(title=f"{p}: {col}", xlabel="training step" if r == len(rows) - 1 else "", ylabel=label)
    return _finish(fig, axes, title, _method_handles(style))


def decorrelation_over_training(curves: pd.DataFrame) -> Figure:
    """Fig. 5: decorrelation at the regularised layer over training steps, DPO vs DecPO."""
    col = _column(curves, DECOR_CURVE)
    rows = [("decorrelation at the regularised\nlayer (1 − mean cos)", col)] if col else []
    return _curve_grid(curves, rows, "Fig. 5: decorrelation over training", ("dpo", *DECPO_FORMS))


def reward_margin_over_training(curves: pd.DataFrame) -> Figure:
    """Fig. 7: reward margin on training and held-out pairs over training steps, DPO vs DecPO."""
    rows = [(label, col) for label, names in MARGIN_CURVES if (col := _column(curves, names))]
    return _curve_grid(curves, rows, "Fig. 7: reward margin over training", ("dpo", *DECPO_FORMS))


def act_variance_diff(tidy: pd.DataFrame, board: pd.DataFrame) -> Figure:
    """Fig. 6: act_variance(method) − act_variance(DPO) per layer, same seed, for DecPO forms and L1-Reg."""
    wide = _wide(tidy, "act_variance")
    others = [m for m in (*DECPO_FORMS, "l1") if m in wide]
    if "dpo" not in wide or not others:
        raise MissingData("needs per-layer `act_variance` rows for DPO and DecPO (or L1-Reg)")
    diff = pd.concat([wide.assign(method=m, value=wide[m] - wide["dpo"]) for m in others]).dropna(subset=["value"])
    style = method_style(others)
    handles = [Line2D([], [], color=c, marker=mk, label=f"{lab} − DPO") for lab, c, mk in style.values()]
    ylabel = "Δ activation variance vs DPO\n(activation units²)"
    title = "Fig. 6: activation variance across hidden units, method − DPO (same seed)"
    return _depth_panels(diff, style, board, tidy, ylabel, title, handles)
