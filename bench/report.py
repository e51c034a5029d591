"""``python -m bench report DIR``: figures, ``report.md`` and ``report.html`` from a results folder.

    python -m bench report results/smoke      # → results/smoke/{report.md,report.html,figures/*.png}

Reads only what ``run suite`` and ``leaderboard`` wrote — ``leaderboard.csv``, ``metrics.csv``,
``leaderboard_seeds.csv``, ``manifest.json``, ``jobs/*.json`` and files inside ``runs/<key>/``
(``curves.csv`` of train stages, ``top_tokens*.json`` of any stage) — and never loads a model or
recomputes a stage. Only when ``leaderboard.csv`` is missing but job records exist are the CSVs
re-rendered from the stored stage metrics (``bench/leaderboard.py``). A figure whose data is absent
(no SAE stage, no training curves, …) is skipped with a logged note and a line in the report.
Markdown and HTML are rendered from one list of blocks, so they hold the same content; the HTML is
self-contained apart from the PNGs, which both reference relatively (``figures/<name>.png``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench import figures as F
from bench.core.errors import StoreError
from bench.core.io import json_records, read_json, read_records, write_with
from bench.figure_specs import FIGURES
from bench.leaderboard import seed_summary, write_leaderboard
from bench.paper.section import paper_section
from bench.render import Block, Bullets, Heading, Image, Para, Table, fmt, to_html, to_markdown
from bench.report_diffing import diffing_section
from bench.report_stats import paired_sections, validation_section
from bench.schema import headline

log = logging.getLogger(__name__)

TABLE_GROUPS = (
    ("Alignment", ("alignment", "preference")),
    ("Monosemanticity (hook layer) and SAE", ("proxies", "sae")),
    ("Base SAE: transfer to each model and drift of its fine-tunes", ("sae_base", "sae_transfer", "sae_drift")),
)
"""The report's tables: the headline metrics (``bench.schema.headline``) of these metric groups."""


@dataclass(frozen=True)
class Results:
    """Everything the report reads from one results folder."""

    dir: Path
    board: pd.DataFrame
    """leaderboard.csv: one row per (model, task, method, seed)."""
    seeds: pd.DataFrame | None
    """leaderboard_seeds.csv (or the same computed from ``board``); None with one seed."""
    tidy: pd.DataFrame
    """metrics.csv (empty when absent)."""
    curves: pd.DataFrame
    """Every train stage's curves.csv, with model, task, method and seed columns added."""
    jobs: list[dict[str, Any]]
    manifest: dict[str, Any]


# ----- loading ------------------------------------------------------------------------------------
def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 0 else None


def _check_folder(d: Path) -> None:
    hint = f"create it with `python -m bench run suite <suite> --out {d}`"
    if not d.is_dir():
        raise StoreError(f"results folder {d} does not exist; {hint}")
    if not (d / "leaderboard.csv").is_file():
        if not json_records(d / "jobs"):
            raise StoreError(f"no stored runs in {d}: expected leaderboard.csv or jobs/*.json; {hint}")

        log.info("%s has job records but no leaderboard.csv; rendering the CSVs from stored stages", d)
        write_leaderboard(d)


def _curves(d: Path, jobs: list[dict[str, Any]]) -> pd.DataFrame:
    frames = []
    for job in jobs:
        key = job.get("stages", {}).get("train")
        f = d / "runs" / str(key) / "curves.csv"
        if key and (c := _read_csv(f)) is not None and not c.empty:
            frames.append(c.assign(**{k: job[k] for k in ("model", "task", "method", "seed")}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "task", "method", "seed"])


def load_results(d: Path) -> Results:
    """Read a results folder; FileNotFoundError/ValueError (naming the folder) when it holds no runs."""
    d = Path(d)
    _check_folder(d)
    board = _read_csv(d / "leaderboard.csv")
    if board is None or board.empty:
        raise StoreError(
            f"{d / 'leaderboard.csv'} has no rows; run `python -m bench run suite <suite> --out {d}` "
            "first (or `python -m bench leaderboard` to merge folders)"
        )
    tidy = _read_csv(d / "metrics.csv")
    if tidy is None:
        tidy = pd.DataFrame(columns=["suite", "model", "task", "method", "seed", "layer", "sae", "metric", "value"])
    seeds = _read_csv(d / "leaderboard_seeds.csv")
    if seeds is None:
        seeds = seed_summary(board)
    jobs = read_records(d / "jobs")
    manifest = read_json(d / "manifest.json") if (d / "manifest.json").is_file() else {}
    return Results(d, board, seeds, tidy, _curves(d, jobs), jobs, manifest)


# ----- figures ------------------------------------------------------------------------------------
def _save_png(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def render_figures(res: Results) -> dict[str, str | None]:
    """Save every figure to ``figures/<name>.png``; name → None when drawn, else why it was skipped."""
    out: dict[str, str | None] = {}
    names = {spec.name for spec in FIGURES}
    for old in (res.dir / "figures").glob("*.png"):  # a figure no longer drawn (renamed or removed)
        if old.stem not in names:
            old.unlink()
    for spec in FIGURES:
        path = res.dir / "figures" / f"{spec.name}.png"
        try:
            fig = spec.draw(res)
        except F.MissingData as e:
            log.warning("figure %s skipped: %s", spec.name, e)
            path.unlink(missing_ok=True)  # never leave a stale figure from an older run
            out[spec.name] = str(e)
            continue
        write_with(path, functools.partial(_save_png, fig))
        out[spec.name] = None
    return out


# ----- sections -----------------------------------------------------------------------------------


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(F.ordered_methods(df["method"]))}
    keys = pd.DataFrame({"model": df["model"].to_numpy(), "task": df["task"].to_numpy()})
    keys["_m"] = df["method"].map(order).to_numpy()
    return df.iloc[keys.sort_values(["model", "task", "_m"], kind="stable").index]  # positions: no column added


def _id_cols(res: Results) -> list[str]:
    return (["model"] if res.board["model"].nunique() > 1 else []) + ["task", "method"]


def _num(v: Any) -> bool:
    return v is not None and not pd.isna(v)


def _metric_table(res: Results, cols: tuple[str, ...]) -> Table | None:
    """Per (task, method): mean ± 95 % CI half-width over seeds; per-row values with one seed."""
    multi = res.seeds is not None
    src = _sorted(res.seeds if multi else res.board)
    present = [c for c in cols if c in src and src[c].notna().any()]
    if not present:
        return None
    ids = _id_cols(res) + ([] if multi else ["seed"])
    rows = []
    for _, r in src.iterrows():
        row = [str(r[i]) for i in ids] + ([str(int(r["n_seeds"]))] if multi else [])
        for c in present:
            h = r.get(f"{c}_ci95") if multi else None
            row.append(fmt(r[c]) + (f" ± {fmt(h)}" if _num(h) and _num(r[c]) else ""))
        rows.append(row)
    return Table(ids + (["n_seeds"] if multi else []) + present, rows)


def leaderboard_section(res: Results) -> list[Block]:
    n = int(res.board["seed"].nunique())
    note = (
        f"Values are means over {n} seeds ± the half-width of the 95 % t confidence interval across "
        "seeds (`leaderboard_seeds.csv`). **Differences within the 95 % CI are noise**, not results."
        if res.seeds is not None
        else "One seed only: there are no confidence intervals, and differences between methods may be noise; "
        "run more seeds (`--seed`) before drawing conclusions. With several seeds, differences within "
        "the 95 % CI are noise."
    )
    blocks: list[Block] = [Heading(2, "Leaderboard"), Para(note)]

    for title, groups in TABLE_GROUPS:
        if (t := _metric_table(res, tuple(headline(groups)))) is not None:
            blocks += [Heading(3, title), t]
    if "base" in set(res.board["method"]):
        blocks.append(
            Para(
                "`pref_acc` and `reward_margin` are not measured for **base** (shown –): it is its own "
                "reference, so they would be 0.5 and 0 by definition."
            )
        )
    blocks += paired_sections(res)
    ids = _id_cols(res) + ["seed"]
    rows = [
        [str(r[c]) for c in ids] + [f"`{r['config_hash']}`", str(r["monobench_version"])]
        for _, r in _sorted(res.board).iterrows()
    ]
    blocks += [
        Heading(3, "Rows and config hashes"),
        Para("Every metric of every row is in `leaderboard.csv`; per-layer values are in `metrics.csv`."),
        Table(ids + ["config_hash", "monobench_version"], rows),
    ]
    return blocks


def figures_section(drawn: dict[str, str | None]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Figures")]
    for spec in FIGURES:
        blocks.append(Heading(3, spec.title))
        if drawn[spec.name] is None:
            blocks += [Image(f"figures/{spec.name}.png", spec.title), Para(spec.caption)]
        else:
            blocks.append(Para(f"Skipped (`{spec.name}.png` not drawn): {drawn[spec.name]}."))
    return blocks


def _generated_fields(prov: dict[str, Any]) -> str:
    found = {k: v for k, v in prov.items() if "generat" in k.lower()}
    if not found:
        return "none recorded"
    return "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in found.items())


def provenance_section(res: Results) -> list[Block]:
    m = res.manifest
    blocks: list[Block] = [Heading(2, "Provenance")]
    if not m:
        return blocks + [
            Para(
                "No `manifest.json` in this folder (e.g. a merged leaderboard); versions, "
                "commit and hardware are unknown."
            )
        ]
    hw = m.get("hardware", {})
    blocks.append(
        Bullets(
            [
                f"monobench {m.get('monobench_version', '?')}, git commit `{m.get('git_commit') or 'unknown'}`, "
                f"Python {m.get('python', '?')}",
                f"suite `{m.get('suite', '?')}` ({m.get('suite_file') or 'shipped'}), seeds {m.get('seeds', '?')}, "
                f"shard {m.get('shard', '1/1')}",
                "hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items()) if hw else "hardware: unknown",
                f"written {m.get('written', '?')}",
                "packages: " + ", ".join(f"{k} {v}" for k, v in sorted(m.get("packages", {}).items()) if v),
            ]
        )
    )
    prov = m.get("data_provenance", {})
    if prov:
        rows = [
            [
                p.get("task", "?"),
                f"`{key}`",
                _generated_fields(p),
                "; ".join(f"{k}: {v}" for k, v in p.items() if k != "task" and "generat" not in k.lower()),
            ]
            for key, p in sorted(prov.items(), key=lambda kv: (str(kv[1].get("task")), kv[0]))
        ]
        blocks += [
            Heading(3, "Data provenance"),
            Para(
                "Where each task's data came from; **model-generated fields** are text produced by "
                "the base model, not by people."
            ),
            Table(["task", "data stage", "model-generated fields", "details"], rows),
        ]
    return blocks


def cite_section(res: Results) -> list[Block]:
    board = _sorted(res.board)
    r = board[board["method"] == "decpo"].iloc[0] if (board["method"] == "decpo").any() else board.iloc[0]
    return [
        Heading(2, "How to cite a result"),
        Para(
            "Cite a number with the monobench version and the `config_hash` of its leaderboard row (both are "
            "columns of `leaderboard.csv`), and cite the software and the reference paper as given in "
            "`CITATION.cff` in the monobench repository root. The config_hash is a hash of the row's stage "
            "keys, so it covers everything they cover: the model's content, the task and its version, the "
            "method, hook, proxy, eval and SAE settings, the seed and each stage's code version."
        ),
        Para(
            f"Example: align_score of {r['method']} on {r['task']} (seed {r['seed']}): monobench "
            f"{r['monobench_version']}, suite `{r['suite']}`, config_hash `{r['config_hash']}`."
        ),
    ]


def completeness_section(res: Results) -> list[Block]:
    """Say when the folder is partial: fewer rows than the suite's tasks × methods × seeds, or failed jobs."""
    cfg = res.manifest.get("suite_config") or {}
    expected = len(cfg.get("tasks", {})) * len(cfg.get("methods", {})) * len(res.manifest.get("seeds") or [])
    failed = res.manifest.get("failed_jobs") or {}
    if not failed and (not expected or len(res.board) >= expected):
        return []
    text = f"**Partial results:** {len(res.board)} of the {expected} jobs of the last run's suite have a row."
    items = [f"`{job}` failed: {why}" for job, why in sorted(failed.items())]
    blocks: list[Block] = [Para(text)]
    return blocks + ([Bullets(items)] if items else [])


def build_report(res: Results, drawn: dict[str, str | None]) -> list[Block]:
    b = res.board
    suites = ", ".join(map(str, b["suite"].unique()))
    models = ", ".join(map(str, b["model"].unique()))
    head: list[Block] = [
        Heading(1, f"monobench report: suite {suites}, model {models}"),
        Para(
            f"{len(b)} leaderboard rows: tasks {', '.join(map(str, b['task'].unique()))}; methods "
            f"{', '.join(F.ordered_methods(b['method']))}; seeds "
            f"{', '.join(map(str, sorted(b['seed'].unique())))}. Generated by `python -m bench report` "
            "from stored runs only."
        ),
    ]
    return (
        head
        + completeness_section(res)
        + leaderboard_section(res)
        + diffing_section(res)
        + paper_section(res)
        + validation_section(res.dir)
        + figures_section(drawn)
        + provenance_section(res)
        + cite_section(res)
    )


def write_report(dir: Path) -> Path:
    """Regenerate ``figures/*.png``, ``report.md`` and ``report.html`` in ``dir``; returns report.md's path."""
    res = load_results(Path(dir))
    drawn = render_figures(res)
    blocks = build_report(res, drawn)
    md = res.dir / "report.md"
    write_with(md, lambda p: p.write_text(to_markdown(blocks), encoding="utf-8"))
    title = blocks[0].text if isinstance(blocks[0], Heading) else "monobench report"
    write_with(res.dir / "report.html", lambda p: p.write_text(to_html(blocks, title), encoding="utf-8"))
    return md
