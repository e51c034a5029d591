"""The report's section "The paper, claim by claim": the claims checklist, Tables 1 and 2.

``claims_blocks`` also writes ``claims.csv`` (``bench.paper.claims.claims_table``) into the folder.
"""

from __future__ import annotations

import pandas as pd

from bench.core.io import write_csv
from bench.figures import method_label
from bench.paper.claims import CLAIMS, claims_table
from bench.paper.specificity import task_share_records
from bench.paper.tables import table1_section, table2_section
from bench.render import Block, Heading, Para, Table, fmt
from bench.report_stats import fmt_p


def _effect(r: pd.Series) -> str:
    if pd.isna(r["diff"]):
        return "–"
    if pd.isna(r["ci_lo"]):
        return fmt(r["diff"])
    return f"{fmt(r['diff'])} [{fmt(r['ci_lo'])}, {fmt(r['ci_hi'])}]"


def _summary(c: pd.DataFrame) -> Table:
    rows = []
    for cid, g in c.groupby("claim", sort=True):
        forms = g.drop_duplicates("treatment")
        verdicts = "; ".join(
            f"{method_label(t)}: **{v}**" if t not in ("–", "dpo") else f"**{v}**"
            for t, v in zip(forms["treatment"], forms["claim_verdict"])
        )
        rows.append([cid, CLAIMS[cid], verdicts])
    return Table(["claim", "the paper says", "verdict"], rows)


def claims_blocks(res) -> list[Block]:
    """The checklist: a summary per claim and every test row; writes ``claims.csv``."""
    c = claims_table(res.board, pd.concat([res.tidy, task_share_records(res)], ignore_index=True))
    write_csv(res.dir / "claims.csv", c)
    note = (
        "Each row tests treatment − control, paired over (task, seed) units (one task's seeds for C4): "
        "mean and its interval at the row's Holm step level, two-sided paired t-test p, Holm-adjusted "
        "across every testable row of this checklist. **supported** / **contradicted**: Holm p ≤ 0.05 with "
        "the claimed / the other sign; **inconclusive**: not at this power — a true effect is likely "
        "smaller than the MDE (80 % power at the row's level); **cannot test**: a needed method is missing. "
        "Verdicts are computed (`bench/paper/claims.py`); all columns are in `claims.csv`."
    )
    rows = [
        [
            str(r["claim"]),
            f"{method_label(r['treatment'])} − {method_label(r['control'])}"
            if r["control"]
            else method_label(r["treatment"]),
            str(r["task"]) if pd.notna(r["task"]) else "–",
            str(r["metric"]),
            "–" if pd.isna(r["n_units"]) else str(int(r["n_units"])),
            _effect(r),
            fmt_p(r["p_holm"]),
            fmt(r["mde"]),
            f"**{r['verdict']}**" + (f" ({r['why']})" if isinstance(r["why"], str) and r["why"] else ""),
        ]
        for _, r in c.iterrows()
    ]
    head = ["claim", "comparison", "task", "metric", "n", "mean [CI at Holm level]", "p (Holm)", "MDE", "verdict"]
    return [
        Heading(3, "Claims checklist"),
        Para(note),
        _summary(c),
        Table(head, rows),
    ]


def paper_section(res) -> list[Block]:
    """Heading, checklist, Table 2 and Table 1; the paper's figures are in the Figures section."""
    intro = (
        "Yan et al. 2024 (arXiv 2406.17969), claim by claim, on this folder's runs. `decpo` is monobench's "
        "reading of DecPO (λ·‖ẐẐᵀ − I‖²_F on L2-normalised rows); `decpo_paper` is the public code's term, "
        "λ·(|Z||Z|ᵀ − I).mean() = λ(‖mean|z|‖² − 1/N), a penalty on the size of the mean absolute activation. "
        "Figs. 3–7 are in the Figures section."
    )
    head: list[Block] = [Heading(2, "The paper, claim by claim"), Para(intro)]
    return head + claims_blocks(res) + table2_section(res.board, res.seeds) + table1_section(res)
