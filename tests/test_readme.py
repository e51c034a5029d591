"""README's tables of ``results/default`` are the committed leaderboard's numbers, as printed.

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


def _default_section() -> list[str]:
    text = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith(START))
    end = next(i for i, line in enumerate(text) if line.startswith(END))
    return text[start:end]


def test_readme_default_tables_are_the_committed_leaderboard():
    board = pd.read_csv(REPO / "results" / "default" / "leaderboard_seeds.csv")
    tables = _tables(_default_section())
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
