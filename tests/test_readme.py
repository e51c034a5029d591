"""README's tables of ``results/default`` and ``results/reference`` are the committed numbers, as printed.

README copies "mean ± 95 % half-width" cells from ``results/default/leaderboard_seeds.csv``; when a stage is
rebuilt and the README is not, a reader cites numbers no run produced. Each cell is compared with the CSV
rounded to the cell's own number of decimals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

START = "**CPU reference run, 3 seeds (`results/default/`).**"
END = "**The reference suite (`results/reference/`"


def _tables(lines: list[str]) -> list[tuple[str, list[dict[str, str]]]]:
    """(the line before the table, its rows as column → cell) for each Markdown table in ``lines``."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            j, rows = i + 2, []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(dict(zip(header, (c.strip() for c in lines[j].strip().strip("|").split("|")))))
                j += 1
            before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            out.append((before, rows))
            i = j
        else:
            i += 1
    return out


def _printed(value: float, like: str) -> str:
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:.{decimals}f}".replace("-0." + "0" * decimals, "0." + "0" * decimals)


def _section(start: str, end: str) -> list[str]:
    """README's lines from the one starting with ``start`` up to (not including) the next starting with ``end``."""
    text = (REPO / "README.md").read_text().splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith(start))
    return text[i : next(k for k, line in enumerate(text) if k > i and line.startswith(end))]


def test_readme_default_tables_are_the_committed_leaderboard():
    board = pd.read_csv(REPO / "results" / "default" / "leaderboard_seeds.csv")
    tables = _tables(_section(START, END))
    assert len(tables) >= 3
    checked = 0
    for before, rows in tables:
        for row in rows:
            task = row.get("task") or ("sycophancy" if before.startswith("Sycophancy") else None)
            match = board[(board.task == task) & (board.method == row["method"])]
            assert len(match) == 1, (task, row["method"])
            for col, cell in row.items():
                if col in ("task", "method") or cell == "–":
                    continue
                mean, half = (c.strip().replace("−", "-") for c in cell.split("±"))
                got = (_printed(match.iloc[0][col], mean), _printed(match.iloc[0][f"{col}_ci95"], half))
                assert got == (_printed(float(mean), mean), half), (task, row["method"], col, cell)
                checked += 1
    assert checked >= 200


def test_the_table_reader_reads_a_table_and_the_line_before_it():
    lines = ["Sycophancy (held-out):", "", "| method | x |", "|---|---|", "| dpo | 0.10 ± 0.02 |", "after"]
    assert _tables(lines) == [("Sycophancy (held-out):", [{"method": "dpo", "x": "0.10 ± 0.02"}])]
    assert _printed(-0.0001, "0.000") == "0.000" and _printed(0.1234, "0.12") == "0.12"


REF_START = "**The reference suite (`results/reference/`"
REF_END = "**The reference suite on one GPU"
LABELS = {"DPO": "dpo", "DecPO": "decpo", "base": "base"}


def _check_pref_acc_row(board: pd.DataFrame, row: dict[str, str]) -> None:
    """DPO's held-out ``pref_acc`` (the base model has no reward margin: chance is 0.5), mean ± t half-width."""
    from bench.core.stats import t_half_width

    v = board[(board.task == row["task"]) & (board.method == "dpo")]["pref_acc"].dropna().to_numpy(float)
    mean, half = (c.strip() for c in row["mean ± 95 % CI"].split("±"))
    assert (_printed(v.mean(), mean), _printed(t_half_width(v), half)) == (mean, half), row
    assert int(row["seeds"]) == len(v)


def _check_paired_row(diffs: dict[str, pd.DataFrame], board: pd.DataFrame, row: dict[str, str]) -> None:
    """A "treatment − control" row: the report's paired difference, Holm family, MDE and reading (``diffs``
    holds each comparison's table once computed)."""
    from bench.leaderboard import paired_differences
    from bench.report_stats import fmt_p, paired_metrics

    if row["comparison"] not in diffs:
        treatment, control = (LABELS[s.strip()] for s in row["comparison"].split("−"))
        d = paired_differences(board, paired_metrics(board), treatment=treatment, control=control)
        assert d is not None
        diffs[row["comparison"]] = d.set_index(["task", "metric"])
    r = diffs[row["comparison"]].loc[(row["task"], row["metric"].strip("`"))]
    mean, half = (c.strip().replace("−", "-").lstrip("+") for c in row["mean ± 95 % CI"].split("±"))
    assert (_printed(r["diff"], mean), _printed(r["diff_ci95"], half)) == (_printed(float(mean), mean), half), row
    assert (int(row["seeds"]), row["p (Holm)"], row["MDE (80 %)"]) == (
        int(r["n_seeds"]),
        fmt_p(r["p_holm"]),
        _printed(r["mde"], row["MDE (80 %)"]),
    ), row
    reading = row["reading"]
    if r["significant"]:
        assert reading == "**beyond noise**", row
    elif r["ci_excludes_0"]:
        assert reading.startswith("raw CI excludes 0"), row
    else:
        assert reading == f"smaller than {row['MDE (80 %)']}", row


def test_readme_reference_table_is_the_committed_reference_leaderboard():
    """README's DecPO − DPO and DPO − base rows equal ``results/reference``'s paired differences, and every
    (task, method) there has the ≥ 5 seeds the reference suite promises."""
    folder = REPO / "results" / "reference"
    board = pd.read_csv(folder / "leaderboard.csv")
    assert (pd.read_csv(folder / "leaderboard_seeds.csv")["n_seeds"] >= 5).all()
    tables = [rows for _, rows in _tables(_section(REF_START, REF_END)) if rows and "comparison" in rows[0]]
    assert len(tables) == 1
    diffs: dict[str, pd.DataFrame] = {}
    for row in tables[0]:
        if row["comparison"].startswith("DPO vs 0.5"):
            _check_pref_acc_row(board, row)
        else:
            _check_paired_row(diffs, board, row)
    tasks = {(r["task"], r["comparison"]) for r in tables[0]}
    assert {(t, "DecPO − DPO") for t in ("toxicity", "reframing", "sycophancy")} <= tasks
