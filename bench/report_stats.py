"""Report sections with statistics: paired comparisons against DPO and the metric-validation table.

Every comparison ``method − dpo`` present in a folder (DecPO − DPO, and the A/A control DPO(A/A) − DPO
beside it) is paired by seed (``bench.leaderboard.paired_differences``): mean ± 95 % t half-width, the
paired t-test's p and its Holm adjustment across the rows of that comparison, the minimum detectable
effect at 80 % power, and a warning where the per-seed spread exceeds the mean difference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.figures import method_label, ordered_methods
from bench.leaderboard import paired_differences
from bench.render import Block, Heading, Para, Table, fmt
from bench.schema import headline

PAIRED_GROUPS = ("alignment", "preference", "proxies", "sae", "sae_transfer", "sae_drift")
"""Paired comparisons cover the headline metrics of these groups."""


def _fmt(v) -> str:

    return fmt(v)


def fmt_p(v: float) -> str:
    return "–" if pd.isna(v) else (f"{v:.3f}" if v >= 0.001 else "<0.001")


def comparison_rows(diffs: pd.DataFrame, many_models: bool) -> list[list[str]]:
    rows = []
    for _, r in diffs.iterrows():
        verdict = "**yes**" if r["significant"] else "raw CI only" if r["ci_excludes_0"] else "no"
        verdict = "no spread (untested)" if r["no_spread"] else verdict
        rows.append(
            ([str(r["model"])] if many_models else [])
            + [
                str(r["task"]),
                str(r["metric"]),
                str(r["n_seeds"]),
                f"{_fmt(r['diff'])} ± {_fmt(r['diff_ci95'])}",
                fmt_p(r["p"]),
                fmt_p(r["p_holm"]),
                verdict,
                _fmt(r["mde"]),
                "⚠" if r["noisy"] else "",
            ]
        )
    return rows


def paired_metrics(board: pd.DataFrame) -> list[str]:
    """The columns every paired table compares: the headline metrics of ``PAIRED_GROUPS`` present in ``board``
    (their ``_null`` reference columns are not compared). Also the Holm family of each table."""
    return [c for c in headline(PAIRED_GROUPS) if c in board and not c.endswith("_null")]


def paired_sections(res) -> list[Block]:
    """One table per ``method − DPO`` comparison in the folder (treatments in display order)."""

    methods = set(res.board["method"])
    if "dpo" not in methods:
        return []

    cols = paired_metrics(res.board)
    many = res.board["model"].nunique() > 1
    head = (["model"] if many else []) + [
        "task",
        "metric",
        "n_seeds",
        "mean ± 95 % CI",
        "p",
        "p (Holm)",
        "beyond noise",
        "MDE (80 %)",
        "spread > |mean|",
    ]
    blocks: list[Block] = []
    for m in ordered_methods(methods - {"dpo", "base"}):
        diffs = paired_differences(res.board, cols, treatment=m, control="dpo")
        if diffs is None:
            continue
        title = f"{method_label(m)} − DPO, paired by seed"
        note = (
            "Per seed both runs train on the same data from the same initialisation, so their difference "
            "d_s is paired: mean of d_s ± the 95 % t half-width, the paired t-test's p, and p Holm-adjusted "
            f'across the {len(diffs)} rows of this table. **beyond noise** = Holm p ≤ 0.05; "raw CI only" = '
            "the unadjusted interval excludes 0 but the adjusted test does not. MDE: the smallest difference "
            "a paired t-test at these seeds and this per-seed spread detects with 80 % power (α = 0.05), so "
            '"no" reads as "smaller than MDE". ⚠: the per-seed spread of d is larger than |mean d|.'
        )
        if m == "dpo_aa":
            note = (
                "**A/A control**: DPO against DPO with other training randomness (data order, dropout). "
                "Every true difference is 0, so rows beyond noise here are false positives; compare their "
                "rate and size with the DecPO − DPO table. " + note
            )
        blocks += [Heading(3, title), Para(note), Table(head, comparison_rows(diffs, many))]
    return blocks


def validation_section(folder: Path) -> list[Block]:
    """The table of ``bench validate`` (``validation.csv`` in the folder), or a line saying how to make it."""
    path = Path(folder) / "validation.csv"
    blocks: list[Block] = [Heading(2, "Metric validation (negative and positive controls)")]
    if not path.is_file():
        return blocks + [
            Para(
                f"No `validation.csv` here; run `python -m bench validate --out {folder}` to add "
                "every metric's controls to this report."
            )
        ]
    v = pd.read_csv(path)
    n_fail = int((~v["pass"].astype(bool)).sum())
    blocks.append(
        Para(
            f"`python -m bench validate`: {len(v)} controls, {n_fail} failing. A negative control feeds "
            "meaningless or shuffled input and must give the chance level; a positive control plants "
            "an effect that must be found."
        )
    )
    rows = [
        [
            str(r["metric"]),
            str(r["kind"]),
            str(r["control"]),
            str(r["expected"]),
            _fmt(r["observed"]),
            "pass" if bool(r["pass"]) else "**FAIL**",
        ]
        for _, r in v.iterrows()
    ]
    return blocks + [Table(["metric", "kind", "control", "expected", "observed", "result"], rows)]
