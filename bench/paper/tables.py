"""The paper's Tables 1 and 2 (Yan et al. 2024) as report blocks, from stored runs only.

- Table 1: top tokens of the most changed MLP neurons (‖ΔW_in,k‖₂ after training, LoRA merged; a
  neuron's tokens are the top entries of W_U · W_down[:, k]) at three depths — the ``neurons`` stage's
  ``top_tokens_by_depth.json`` — or, for runs made before that stage, at the hook layer only
  (the proxies stage's ``top_tokens.json``).
- Table 2: align_score (share judged aligned) of every method on each task, mean ± 95 % t CI over
  seeds, beside the paper's published % judged aligned (SPEC §7: Llama-2-7b-hf, an LLM judge). Different
  models, data sizes and judges: the columns are context for plausibility, not numbers to match.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.core.io import read_json
from bench.figures import method_label, ordered_methods
from bench.render import Block, Heading, Para, Table, fmt

PAPER_TABLE2: dict[str, dict[str, float]] = {
    "ICL": {"toxicity": 16.0, "reframing": 13.3, "sycophancy": 20.0},
    "SFT": {"toxicity": 26.0, "reframing": 31.7, "sycophancy": 20.0},
    "DPO": {"toxicity": 44.0, "reframing": 45.6, "sycophancy": 11.1},
    "SimDPO": {"toxicity": 42.0, "reframing": 46.7, "sycophancy": 20.0},
    "L1-Reg": {"toxicity": 50.0, "reframing": 47.8, "sycophancy": 13.3},
    "DecPO": {"toxicity": 56.0, "reframing": 53.3, "sycophancy": 22.2},
}
"""Yan et al. 2024, Table 2 (SPEC §7): % judged aligned, Llama-2-7b-hf."""
PAPER_ROW = {"base": "ICL", "sft": "SFT", "dpo": "DPO", "simpo": "SimDPO", "l1": "L1-Reg"}
PAPER_ROW |= {"decpo": "DecPO", "decpo_paper": "DecPO"}
"""Our method → the paper's row name (both DecPO forms sit beside the paper's one DecPO row)."""
TABLE1_FILES = ("top_tokens_by_depth.json", "top_tokens.json")
TABLE1_METHODS = ("dpo", "decpo", "decpo_paper")
TABLE1_NEURONS = 3
"""Neurons shown per depth (the stored file holds more)."""


def table2_section(board: pd.DataFrame, seeds: pd.DataFrame | None) -> list[Block]:
    """Table 2: our align_score per task (mean ± CI) beside the paper's value for the matching row."""
    if "align_score" not in board or board["align_score"].isna().all():
        return [Heading(3, "Table 2: alignment"), Para("No `align_score` in leaderboard.csv (no eval stage).")]
    tasks = [t for t in ("toxicity", "reframing", "sycophancy") if t in set(board["task"])]
    src = seeds if seeds is not None else board
    rows = []
    for m in ordered_methods(board["method"]):
        paper = PAPER_ROW.get(m)
        row = [method_label(m), paper or "–"]
        for t in tasks:
            g = src[(src["method"] == m) & (src["task"] == t)]
            v = g["align_score"].mean() if not g.empty else float("nan")
            h = g["align_score_ci95"].iloc[0] if seeds is not None and not g.empty else None
            ours = (
                "–" if pd.isna(v) else f"{100 * v:.1f}" + (f" ± {100 * h:.1f}" if h is not None and pd.notna(h) else "")
            )
            row += [ours, f"{PAPER_TABLE2[paper][t]:.1f}" if paper else "–"]
        rows.append(row)
    head = ["method", "paper row"] + [f"{t} {who}" for t in tasks for who in ("(ours)", "(paper)")]
    note = (
        "% judged aligned. **ours**: align_score × 100 on held-out items, mean ± 95 % t CI over seeds, "
        f"model `{', '.join(map(str, board['model'].unique()))}`, judged by monobench's task scorers (SPEC §3). "
        "**paper**: Yan et al. 2024, Table 2 (SPEC §7), Llama-2-7b-hf judged by an LLM. Different models, "
        "data sizes and judges: read the paper's columns as context, not as targets. Both DecPO forms "
        "(ours, `decpo`; the public code's term, `decpo_paper`) sit beside the paper's one DecPO row."
    )
    return [Heading(3, "Table 2: alignment, ours beside the paper's"), Para(note), Table(head, rows)]


def _token_cell(v: Any) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in v) if isinstance(v, list) else fmt(v)


def _table1_file(res, job: dict[str, Any]):
    for name in TABLE1_FILES:
        for key in job.get("stages", {}).values():
            if (f := res.dir / "runs" / str(key) / name).is_file():
                return f
    return None


def table1_rows(records: list[dict[str, Any]], n: int = TABLE1_NEURONS) -> list[list[str]]:
    """The first ``n`` neurons of each stored layer (records are ranked by change within a layer)."""
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_layer.setdefault(int(r["layer"]), []).append(r)
    rows = []
    for layer in sorted(by_layer):
        for r in by_layer[layer][:n]:
            depth = r.get("rel_depth")
            rows.append(
                [str(layer), "–" if depth is None else f"{depth:.2f}", str(r["neuron"]), fmt(r["change"])]
                + [_token_cell(r["tokens"])]
            )
    return rows


def table1_section(res) -> list[Block]:
    """Table 1: per task, the first seed's DPO / DecPO most changed neurons and their top tokens."""
    blocks: list[Block] = [Heading(3, "Table 1: top tokens of the most changed MLP neurons")]
    shown, first_seed = 0, min((j["seed"] for j in res.jobs), default=None)
    for job in sorted(res.jobs, key=lambda j: (j["model"], j["task"], j["method"], j["seed"])):
        if job["method"] not in TABLE1_METHODS or job["seed"] != first_seed:
            continue
        if (f := _table1_file(res, job)) is None:
            continue
        rows = table1_rows(read_json(f))
        blocks += [
            Para(f"**{job['task']} · {method_label(job['method'])}** (seed {job['seed']}, `{f.relative_to(res.dir)}`)"),
            Table(["layer", "rel. depth", "neuron", "‖ΔW_in,k‖₂", "top tokens (W_U · W_down[:, k])"], rows),
        ]
        shown += 1
    if not shown:
        blocks.append(Para(f"No top-token file ({', '.join(TABLE1_FILES)}) in the DPO / DecPO runs."))
    return blocks
