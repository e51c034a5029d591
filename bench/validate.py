"""``python -m bench validate``: run every metric's negative and positive controls (``bench.controls``).

    python -m bench validate --quick --out results/default   # < 3 min; adds the table to that folder's report
    python -m bench validate                                  # also the controls that train models

Imports every module of ``bench``, ``saes`` and ``tasks`` (each registers the controls of the metrics it
defines), runs them in registration order and writes ``<out>/validation.csv`` with the columns metric,
kind, control, expected, observed, pass; returns one verdict line per metric.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import pkgutil
import time
from pathlib import Path

import pandas as pd

from bench.core.controls import CONTROLS, ControlContext
from bench.core.io import write_csv
from bench.models import load_model
from bench.validate_aa import aa_exclusion_rate  # noqa: F401  (registers the A/A control)

log = logging.getLogger(__name__)
SKIP = {"bench.cli", "bench.__main__"}


def load_controls() -> None:
    """Import every module of the packages that define metrics, so their controls register."""
    for pkg_name in ("bench", "saes", "tasks"):
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            if mod.name not in SKIP and not mod.name.split(".")[-1].startswith("perf"):
                importlib.import_module(mod.name)


def run_controls(out: Path, *, quick: bool = False, seed: int = 0) -> pd.DataFrame:
    """Run the controls, write ``out/validation.csv`` and return its table."""

    load_controls()

    tiny = functools.cache(lambda: load_model("tiny:llama", seed=seed))
    ctx = ControlContext(seed=seed, quick=quick, tiny_model=tiny)
    rows = []
    for c in CONTROLS:
        if quick and not c.quick:
            continue
        start = time.perf_counter()
        observed = float(c.run(ctx))
        ok = bool(math.isfinite(observed) and c.check(observed))
        rows.append(
            {
                "metric": c.metric,
                "kind": c.kind,
                "control": c.name,
                "expected": c.expect,
                "observed": observed,
                "pass": ok,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        log.info("%s / %s: %s (%s)", c.metric, c.name, observed, "pass" if ok else "FAIL")
    table = pd.DataFrame(rows)
    write_csv(Path(out) / "validation.csv", table)
    return table


def verdicts(table: pd.DataFrame) -> list[str]:
    """One line per metric: how many of its controls passed, and which failed."""
    lines = []
    for metric, g in table.groupby("metric", sort=False):
        failed = g.loc[~g["pass"], "control"].tolist()
        kinds = "+".join(sorted(set(g["kind"])))
        lines.append(
            f"{metric:<28} {'PASS' if not failed else 'FAIL'}  {int(g['pass'].sum())}/{len(g)} ({kinds})"
            + (f"; failed: {'; '.join(failed)}" if failed else "")
        )
    return lines
