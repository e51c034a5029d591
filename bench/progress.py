"""A live overview of a suite run (``rich``): job i of N, the job and stage being computed, time elapsed and an
estimate of the time left, with one summary line per finished job printed above it.

The estimate sums, over the stages still to build, the median ``seconds`` of stages of the same name already in
the results folder (``stage.json``); a stage never built there yet counts as unknown and the estimate is then a
lower bound (shown with "≥"). Off when stderr is not a terminal: then only the summary lines are printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.core.io import read_json


def stage_medians(runs: Path) -> dict[str, float]:
    """Stage name → median seconds of the stages of that name finished in ``runs/``."""
    times: dict[str, list[float]] = {}
    for rec in runs.glob("*/stage.json") if runs.is_dir() else []:
        try:
            s = read_json(rec)
        except Exception:  # noqa: BLE001 — a damaged record is the store's business, not the estimate's
            continue
        if (name := s.get("identity", {}).get("stage")) and isinstance(s.get("seconds"), (int, float)):
            times.setdefault(name, []).append(float(s["seconds"]))
    return {k: statistics.median(v) for k, v in times.items()}


def job_estimate(stages: Iterable[str], medians: dict[str, float]) -> tuple[float, bool]:
    """(Σ known medians of ``stages``, whether every stage had one)."""
    names = list(stages)
    return sum(medians.get(n, 0.0) for n in names), all(n in medians for n in names)


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Overview:
    """Progress of one process's jobs. ``todo`` maps job id → names of its stages to build."""

    def __init__(self, title: str, todo: dict[str, list[str]], runs: Path, *, enabled: bool, echo: Callable):
        self.echo, self.enabled, self.start, self.done = echo, enabled, time.time(), 0
        medians = stage_medians(runs)
        self.left = {j: job_estimate(s, medians) for j, s in todo.items()}
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[left]}"),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(title, total=len(todo), left=self._left_text())
            self._bar.start()

    def _left_text(self) -> str:
        """From stored stage times; with none (a cold folder), from the rate of the jobs finished so far."""
        if not self.left:
            return ""
        secs = sum(s for s, _ in self.left.values())
        exact = all(ok for _, ok in self.left.values())
        if secs or exact:
            return f"est. left {'' if exact else '≥ '}{_fmt_minutes(secs)}"
        if self.done:
            return f"est. left ~{_fmt_minutes((time.time() - self.start) / self.done * len(self.left))}"
        return "est. left –"

    def stage(self, job: str, stage: str, i: int, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"job {i}/{n} {job} · {stage}")

    def job_done(self, job: str, line: str | None) -> None:
        """Advance past ``job`` and print its summary ``line`` (None: another process printed it)."""
        self.left.pop(job, None)
        self.done += 1
        if self._bar is not None:
            if line:
                self._bar.console.print(line, highlight=False)
            self._bar.update(self._task, advance=1, left=self._left_text())
        elif line:
            self.echo(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
