"""The claims checklist: each claim of Yan et al. 2024 as tests on a results folder, with a computed verdict.

Every test is a paired comparison treatment − control of one quantity, over the (model, task, seed) units where
both methods ran (both share that seed's data split; claims "on each task" test each task alone):

    d_u = q(treatment, u) − q(control, u);  mean d̄, paired t-test p, n = number of units.

The p-values of all testable rows of the checklist are Holm-adjusted together (``bench.core.stats.holm``).
A row's interval and minimum detectable effect (MDE, 80 % power) use the level of its Holm step,
α_i = 0.05 / (m − i + 1) for the i-th smallest of m p-values, so "inconclusive" reads "any true effect
is smaller than about the MDE". Verdicts, computed from the numbers, never typed:

- **supported**: p_Holm ≤ 0.05 and d̄ has the claimed sign;
- **contradicted**: p_Holm ≤ 0.05 and d̄ has the other sign;
- **inconclusive**: p_Holm > 0.05 (at this power);
- **cannot test**: a needed method (or per-layer metric) is missing, fewer than 2 paired units, or
  differences that are all equal and not 0 (no spread: a t-test is undefined).

C6 compares one method with itself across depth (early − late layers of ``top_tokens_task_share``,
``bench.paper.specificity``; claimed negative): its control is "none" and d_u is the contrast itself.

A claim's verdict (per DecPO form): contradicted if any of its rows is, supported if all are, cannot
test if all rows are, else inconclusive. Calibration: on null data (treatment = control + noise) the share of rows that
are not inconclusive is at most the nominal 5 % (``tests/test_claims.py``); a planted effect is supported.
Each DecPO claim is tested for both forms, ``decpo`` (ours) and ``decpo_paper`` (the public code's term).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.core.stats import holm, mde_paired, paired_test

ALPHA = 0.05
EARLY, LATE = 1 / 3, 2 / 3
"""Relative depths: "early" layers are those at ≤ 1/3 of the depth, "late" those at ≥ 2/3."""
DECPO_FORMS = ("decpo", "decpo_paper")
TASKS = ("toxicity", "reframing", "sycophancy")
UNITS = ["model", "task", "seed"]
"""A paired unit: one (model, task, seed); a folder of several models pairs each model's runs with its own."""
Quantity = Callable[[pd.DataFrame, pd.DataFrame, str], pd.DataFrame]
"""(board, tidy, method) → one row per unit: model, task, seed, value."""


def column(name: str) -> Quantity:
    """A leaderboard column (one value per (task, method, seed))."""

    def q(board: pd.DataFrame, tidy: pd.DataFrame, method: str) -> pd.DataFrame:
        if name not in board:
            return pd.DataFrame(columns=UNITS + ["value"])
        rows = board[board["method"] == method]
        return rows[UNITS].assign(value=rows[name].astype(float)).dropna(subset=["value"])

    q.__doc__ = f"leaderboard `{name}`"
    return q


def early_minus_late(metric: str) -> Quantity:
    """Mean of a per-layer metric over early layers (rel. depth ≤ 1/3) minus its mean over late ones (≥ 2/3)."""

    def q(board: pd.DataFrame, tidy: pd.DataFrame, method: str) -> pd.DataFrame:
        d = tidy[(tidy["metric"] == metric) & (tidy["method"] == method) & tidy["layer"].notna() & tidy["sae"].isna()]
        if d.empty:
            return pd.DataFrame(columns=UNITS + ["value"])
        depth = d["layer"] / d.groupby("model")["layer"].transform("max").clip(lower=1)
        early = d[depth <= EARLY].groupby(UNITS)["value"].mean()
        late = d[depth >= LATE].groupby(UNITS)["value"].mean()
        return (early - late).rename("value").reset_index().dropna(subset=["value"])

    q.__doc__ = f"early − late layers of `{metric}`"
    return q


@dataclass(frozen=True)
class Test:
    """One row of the checklist: q(treatment) − q(control) with the claimed sign."""

    claim: str
    treatment: str
    control: str
    metric: str
    quantity: Quantity
    task: str = "all"
    """"all": units are (model, task, seed) over every task; else that task's seeds only."""
    sign: int = 1


CLAIMS: dict[str, str] = {
    "C1": "DPO increases decorrelation over the base model, most in early layers",
    "C2": "DecPO increases decorrelation beyond DPO",
    "C3": 'DecPO increases activation variance ("sparsity")',
    "C4": "DecPO improves alignment over DPO on each of the three tasks",
    "C5": "DecPO sustains a larger reward margin than DPO",
    "C6": "deeper layers' top tokens are task-specific",
}


def checklist_tests() -> list[Test]:
    """The tests of every claim."""
    dp, dl = "decorrelation_prompt", "decorrelation_prompt_mean"
    tests = [
        Test("C1", "dpo", "base", f"`{dl}` (paper's read-out, all layers)", column(dl)),
        Test("C1", "dpo", "base", f"early − late layers of `{dp}`", early_minus_late(dp)),
    ]
    for form in DECPO_FORMS:
        tests += [
            Test("C2", form, "dpo", f"`{dl}` (paper's read-out, all layers)", column(dl)),
            Test("C2", form, "dpo", "`decorrelation` (regularised layer, DecPO's token)", column("decorrelation")),
            Test("C3", form, "dpo", "`act_variance` (regularised layer)", column("act_variance")),
            *[Test("C4", form, "dpo", "`align_score`", column("align_score"), task=t) for t in TASKS],
            Test("C5", form, "dpo", "`reward_margin` (held-out, end of training)", column("reward_margin")),
        ]
    share = "early − late layers of `top_tokens_task_share` (Table 1's neurons)"
    return tests + [Test("C6", "dpo", "", share, early_minus_late("top_tokens_task_share"), sign=-1)]


def _paired(t: Test, board: pd.DataFrame, tidy: pd.DataFrame) -> list[float]:
    a = t.quantity(board, tidy, t.treatment)
    b = t.quantity(board, tidy, t.control) if t.control else a.assign(value=0.0)  # no control: d_u = q(t, u)
    if t.task != "all":
        a, b = a[a["task"] == t.task], b[b["task"] == t.task]
    m = a.merge(b, on=UNITS, suffixes=("_t", "_c"))
    return (m["value_t"] - m["value_c"]).to_numpy(float).tolist()


def _row(t: Test, board: pd.DataFrame, tidy: pd.DataFrame) -> dict:
    row: dict[str, Any] = {"claim": t.claim, "claim_text": CLAIMS[t.claim], "treatment": t.treatment}
    row["control"] = t.control
    row |= {"task": t.task, "metric": t.metric, "claimed_sign": "+" if t.sign > 0 else "−"}
    missing = [m for m in (t.treatment, t.control) if m and m not in set(board["method"])]
    r = paired_test(_paired(t, board, tidy))
    row |= {"n_units": r["n"], "diff": r["mean"], "sd": r["sd"], "p": r["p"]}
    if missing or r["n"] < 2:
        why = f"no {' or '.join(missing)} run" if missing else f"{r['n']} paired unit(s) (needs ≥ 2)"
        row |= {"verdict": "cannot test", "why": why}
    elif not math.isfinite(r["p"]):  # all n differences equal and not 0: no spread to test against
        row |= {"verdict": "cannot test", "why": f"the {r['n']} paired differences are all equal (no spread)"}
    return row


def _holm_levels(p: list[float]) -> list[float]:
    """α of each p's Holm step: 0.05 / (m − i + 1) for the i-th smallest of the m finite p-values; tied p-values
    share the first (strictest) of their steps, whatever their order."""
    ok = [i for i, v in enumerate(p) if math.isfinite(v)]
    out = [math.nan] * len(p)
    first: dict[float, int] = {}
    for step, i in enumerate(sorted(ok, key=lambda i: p[i])):
        out[i] = ALPHA / (len(ok) - first.setdefault(p[i], step))
    return out


def _judge(row: dict, sign: int) -> dict:
    """CI and MDE at the row's Holm level, and its verdict (module docstring)."""
    n, level, sd = row["n_units"], row["level"], row["sd"]
    half = float(stats.t.ppf(1 - level / 2, n - 1) * sd / math.sqrt(n)) if math.isfinite(sd) else math.nan
    row |= {"ci_lo": row["diff"] - half, "ci_hi": row["diff"] + half, "mde": mde_paired(sd, n, alpha=level)}
    if row["p_holm"] <= ALPHA:
        row["verdict"] = "supported" if np.sign(row["diff"]) == sign else "contradicted"
    else:
        row["verdict"] = "inconclusive"
    return row


def claims_table(board: pd.DataFrame, tidy: pd.DataFrame) -> pd.DataFrame:
    """Every row of the checklist with its paired effect, Holm-adjusted p, CI, MDE and verdict."""
    tests = checklist_tests()
    rows = [_row(t, board, tidy) for t in tests]
    live = [i for i, r in enumerate(rows) if "verdict" not in r]
    p_holm = holm([rows[i]["p"] for i in live])
    levels = _holm_levels([rows[i]["p"] for i in live])
    for i, ph, lv in zip(live, p_holm, levels):
        rows[i] |= {"p_holm": ph, "level": lv, "why": ""}
        _judge(rows[i], tests[i].sign)
    out = pd.DataFrame(rows)
    out["claim_verdict"] = out.groupby(["claim", "treatment"])["verdict"].transform(claim_verdict)
    cols = ["claim", "claim_text", "treatment", "control", "task", "metric", "claimed_sign", "n_units", "diff"]
    cols += ["ci_lo", "ci_hi", "level", "p", "p_holm", "mde", "verdict", "why", "claim_verdict"]
    return out.reindex(columns=cols)


def claim_verdict(verdicts: pd.Series) -> str:
    """A claim's verdict from its rows' (module docstring)."""
    v = set(verdicts)
    if "contradicted" in v:
        return "contradicted"
    if v == {"supported"}:
        return "supported"
    if v == {"cannot test"}:
        return "cannot test"
    return "inconclusive"
