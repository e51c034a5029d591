"""Report section: which base-SAE latents alignment changed, and whether two methods changed the same ones.

For every task and seed, each model's ``sae_transfer`` stage stores its ``top_changed`` latents (the
``sae_base.top_changed`` alive latents with the largest frequency change against the base model,
``saes.diffing.top_changed``). Two methods changed *the same* latents when the Jaccard overlap of their sets
exceeds the chance level of random sets of that size among the alive latents (``jaccard_chance``), and
*as much as noise* when it matches DPO against its A/A control DPO(A/A), which differs from DPO only in
training randomness.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.core.io import read_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.figures import method_label, ordered_methods
from bench.render import Block, Bullets, Heading, Para, Table, fmt
from saes.diffing import jaccard, jaccard_chance


@register_metrics
class OverlapMetrics(MetricSet):
    """Computed by the report across two jobs of one task and seed (not a leaderboard column)."""

    group, where = "report", "bench.report_diffing.overlaps"
    sae_transfer_top_jaccard: float | None = metric(
        "Jaccard overlap of two methods' sets of most-changed base-SAE latents (same task and seed), beside its "
        "chance level for random sets of that size",
        better="none",
        unit="fraction",
    )


def _top_sets(res) -> dict[tuple[str, str, int], tuple[set[int], int]]:
    """(task, method, seed) → (top-changed latent ids, alive latents) from each job's ``sae_transfer`` stage."""
    out = {}
    for job in res.jobs:
        key = job.get("stages", {}).get("sae_transfer")
        f = res.dir / "runs" / str(key) / "top_changed.json"
        if key and f.is_file():
            rec = read_json(f)
            out[(job["task"], job["method"], int(job["seed"]))] = (
                {r["latent"] for r in rec["latents"]},
                rec["n_alive"],
            )
    return out


def overlaps(res, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per task and method pair: mean Jaccard over seeds and its mean chance level."""
    sets = _top_sets(res)
    rows = []
    for task in sorted({k[0] for k in sets}):
        for a, b in pairs:
            seeds = sorted(
                {s for t, m, s in sets if t == task and m == a} & {s for t, m, s in sets if t == task and m == b}
            )
            if not seeds:
                continue
            js = [jaccard(sets[(task, a, s)][0], sets[(task, b, s)][0]) for s in seeds]
            chance = [jaccard_chance(len(sets[(task, a, s)][0]), sets[(task, a, s)][1]) for s in seeds]
            rows.append(
                {
                    "task": task,
                    "a": a,
                    "b": b,
                    "n_seeds": len(seeds),
                    "jaccard": float(np.nanmean(js)),
                    "chance": float(np.nanmean(chance)),
                }
            )
    return rows


def diffing_section(res) -> list[Block]:
    methods = set(res.board["method"])
    if "sae_transfer_freq_changed" not in res.board or "dpo" not in methods:
        return []
    others = [m for m in ordered_methods(methods - {"base", "dpo", "random_init"})]
    rows = overlaps(res, [("dpo", m) for m in others])
    if not rows:
        return []
    table = Table(
        ["task", "pair", "n_seeds", "Jaccard of top-changed latents", "chance"],
        [
            [r["task"], f"DPO vs {method_label(r['b'])}", str(r["n_seeds"]), fmt(r["jaccard"]), fmt(r["chance"])]
            for r in rows
        ],
    )
    example = next((j for j in res.jobs if j["method"] == "dpo" and "sae_transfer" in j.get("stages", {})), None)
    blocks: list[Block] = [
        Heading(2, "What alignment changed in the base SAE's latents"),
        Para(
            "One base SAE per base model (trained on a generic corpus, `[sae_base]`) is read on every model at the "
            "same held-out tokens. Each model's most-changed latents are the alive latents with the largest "
            "change in per-document firing rate against the base model. Two methods changed the same latents "
            "when their overlap beats chance; DPO vs DPO (A/A) is the overlap that training randomness alone gives."
        ),
        table,
    ]
    if example is not None:
        base_sae = example["stages"].get("base_sae")
        top = read_json(res.dir / "runs" / example["stages"]["sae_transfer"] / "top_changed.json")["latents"][:3]
        blocks.append(
            Bullets(
                [
                    f"`python -m bench show-feature {res.dir}/runs/{base_sae} {r['latent']}`: firing rate "
                    f"{fmt(r['base_rate'])} (base) → {fmt(r['model_rate'])} (DPO, {example['task']}, seed "
                    f"{example['seed']})"
                    for r in top
                ]
            )
        )
    return blocks
