"""Timing primitives and result rows of ``python -m bench perf`` (see ``benchmarks/perf.py`` for what is measured)."""

from __future__ import annotations

import contextlib
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

RatioDef = Literal["ours/peer", "peer/ours"]


COLUMNS = (
    "benchmark",
    "status",
    "ours",
    "peer",
    "unit",
    "ratio",
    "ratio_def",
    "goal",
    "met",
    "reps",
    "ours_min",
    "ours_max",
    "peer_min",
    "peer_max",
    "device",
    "notes",
)


class PerfSizes(BaseModel, extra="forbid", frozen=True, use_attribute_docstrings=True):
    """Input sizes and repetition counts of one perf run."""

    reps: int = Field(3, ge=1)
    """Timed repetitions per side; the figure is their median."""
    warmup: int = Field(1, ge=1)
    """Untimed repetitions (DPO: real trainer steps) before timing."""
    layer: int | float = 0.5
    """Hooked layer (index or fraction of depth) for the SAE and DecPO benchmarks."""
    sae_texts: int = Field(64, ge=4)
    """Texts collected for the SAE pipeline; the token budget is their train split, once."""
    sae_context: int = Field(64, ge=4)
    """Tokens per text (ours) and per packed window (SAELens)."""
    sae_batch: int = Field(256, ge=1)
    """SAE training batch (activations per step), both sides."""
    sae_expansion: int = Field(2, ge=1)
    """d_sae = expansion × d_in (topk), both sides."""
    sae_k: int = Field(32, ge=1)
    """Active latents per token (topk)."""
    collect_batch: int = Field(16, ge=1)
    """Texts per LLM forward while collecting (SAELens gets windows holding as many tokens)."""
    dpo_pairs: int = Field(2, ge=1)
    """Preference pairs in the fixed DPO/DecPO batch (2 rows each)."""
    dpo_max_length: int = Field(128, ge=16)
    """Max prompt + reply tokens of the DPO batch."""
    dpo_max_prompt: int = Field(64, ge=8)
    """Max prompt tokens of the DPO batch."""
    ref_steps: int = Field(2, ge=1)
    """Optimiser steps of each method in the shared-reference benchmark (each pair seen once)."""
    ref_batch: int = Field(4, ge=1)
    """Pairs per step there: the family trains on ref_steps × ref_batch pairs."""
    proxy_texts: int = Field(2, ge=2)
    """Texts whose last-token activations the proxy benchmark collects (chat-formatted)."""
    multi_layers: tuple[int | float, ...] = (0.25, 0.5)
    """Layers (indices or depth fractions) of the multi-SAE benchmark; one store per layer."""
    multi_ks: tuple[int, ...] = (16, 32)
    """topk k of the SAEs trained on each layer's store (width: sae_expansion)."""
    multi_epochs: int = Field(3, ge=1)
    """Epochs of the train split each multi-SAE SAE trains for (SAELens re-runs the LLM each epoch)."""
    matmul_n: int | None = None
    """Side of the peak matmul; None = 2048 on CPU, 8192 on CUDA."""


QUICK = PerfSizes()


FULL = PerfSizes(
    reps=5,
    sae_texts=512,
    sae_batch=1024,
    sae_expansion=4,
    dpo_pairs=8,
    ref_steps=4,
    dpo_max_length=256,
    dpo_max_prompt=128,
    proxy_texts=16,
)


@dataclass(frozen=True)
class PerfRow:
    """One line of perf.csv. ``status`` is ``ok`` or ``not run: <reason>`` (then the numbers are None)."""

    benchmark: str
    status: str
    unit: str = ""
    ratio_def: RatioDef | Literal[""] = ""
    goal: str = ""
    """``>=x`` or ``<=x`` on the ratio, or empty when the figure is reported without a goal."""
    ours: float | None = None
    peer: float | None = None
    ratio: float | None = None
    met: bool | None = None
    reps: int = 0
    ours_min: float | None = None
    ours_max: float | None = None
    peer_min: float | None = None
    peer_max: float | None = None
    device: str = ""
    notes: str = ""


def _row(
    benchmark: str, ours: list[float], peer: list[float], *, unit: str, ratio_def: RatioDef, goal: str, notes: str
) -> PerfRow:
    """Medians, min/max of both sides; ratio from the medians as ``ratio_def`` says; ``met`` from ``goal``."""
    if ratio_def not in ("ours/peer", "peer/ours") or (goal and goal[:2] not in (">=", "<=")):
        raise ValueError(
            f"ratio_def {ratio_def!r} / goal {goal!r}: allowed 'ours/peer' or 'peer/ours', '>=x', '<=x', ''"
        )
    o, p = statistics.median(ours), statistics.median(peer)
    ratio = o / p if ratio_def == "ours/peer" else p / o
    met = None if not goal else (ratio >= float(goal[2:]) if goal.startswith(">=") else ratio <= float(goal[2:]))
    return PerfRow(
        benchmark,
        "ok",
        unit,
        ratio_def,
        goal,
        o,
        p,
        ratio,
        met,
        len(ours),
        min(ours),
        max(ours),
        min(peer),
        max(peer),
        "",
        notes,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def alternate(sides: dict[str, Callable[[], float]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run every side ``warmup`` times untimed, then ``reps`` times each, interleaved with a rotating order.

    Each side returns the seconds it measured itself (so per-run setup stays outside the timer).
    """
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(sides[n]())
    return out


def device_label(device: torch.device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<model name> (<torch threads> threads)``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu:{cpu} ({torch.get_num_threads()} threads)"
