"""``shared_ref_logps`` perf row: the DPO family's train stages of one (task, seed) with the reference
log-probs shared (``share_ref_logps = true``, ``bench.ref_logps``) against the per-step reference.

Both sides run ``bench.align.train_policy`` — the train stage's work, curves included — for every method
in ``FAMILY`` in turn on the same pairs, seen once (``ref_steps`` steps × ``ref_batch`` pairs, as the
reference suite's 16 × 4 over its 64 pairs); ours starts each repetition from an empty memo, so its first
method computes every row and the others reuse them. Figure = seconds for the whole family; ratio =
peer / ours (the speed-up of the family's train stages).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.align import train_policy
from bench.core.task import Pair
from bench.methods import METHODS
from bench.ref_logps import RefLogpsMemo
from benchmarks.timing import PerfRow, PerfSizes, _row, _timed, alternate

FAMILY = ("dpo", "dpo_aa", "l1", "decpo", "decpo_paper")
"""The reference suite's methods that train against the frozen reference."""


def _train_family(
    model, tok, pairs: list[Pair], held_out: list[Pair], layer: int, sizes: PerfSizes, work: Path, shared: bool
):
    memo = RefLogpsMemo(work / f"memo-{len(list(work.glob('memo-*')))}", "perf") if shared else None
    for name in FAMILY:
        settings = dict(
            batch_size=sizes.ref_batch,
            max_steps=sizes.ref_steps,
            max_length=sizes.dpo_max_length,
            max_prompt_length=sizes.dpo_max_prompt,
            eval_every=sizes.ref_steps,
            curve_pairs=2,
            curve_prompts=4,
            share_ref_logps=shared,
        )
        cfg = METHODS[name].config_cls(**settings)
        train_policy(name, cfg, model, tok, pairs, held_out, work / "trainer", 0, False, layer=layer, ref_memo=memo)
    if memo is not None and memo.computed != len(pairs):
        raise RuntimeError(f"the shared side computed {memo.computed} reference rows, expected {len(pairs)}")


def bench_shared_ref(
    model, tok, pairs: list[Pair], layer: int, sizes: PerfSizes, device: torch.device, work: Path
) -> PerfRow:
    """``shared_ref_logps``: the family's train stages, shared reference (ours) vs per-step (peer)."""
    n = sizes.ref_steps * sizes.ref_batch
    train, held_out = pairs[:n], pairs[n : n + 2]
    if len(train) < n or len(held_out) < 2:
        raise ValueError(f"shared_ref_logps needs {n + 2} pairs, got {len(pairs)}")
    sides = {
        side: (
            lambda shared=shared: _timed(
                lambda: _train_family(model, tok, train, held_out, layer, sizes, work, shared), device
            )
        )
        for side, shared in (("ours", True), ("peer", False))
    }
    times = alternate(sides, sizes.reps, warmup=0)  # type: ignore[arg-type]
    notes = (
        f"{len(FAMILY)} methods ({', '.join(FAMILY)}) × {sizes.ref_steps} steps of {sizes.ref_batch} pairs, each pair "
        f"once; train_policy with curves; ours = share_ref_logps (first method computes, the rest reuse)"
    )
    return _row("shared_ref_logps", times["ours"], times["peer"], unit="s", ratio_def="peer/ours", goal="", notes=notes)
