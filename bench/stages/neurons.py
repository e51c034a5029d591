"""``neurons``: the paper's Table 1 — the MLP neurons whose input weights training changed most, at three
depths, with their top tokens (``bench.proxies.most_changed_neurons``), for every trained policy.

Writes ``top_tokens_by_depth.json`` (per layer, the ``TOP`` most changed neurons ranked by change) and,
per layer, ``top_neuron_change`` = max_k ‖W_in,k(policy) − W_in,k(base)‖₂ (LoRA merged). Weights only:
no forward pass. Llama-style MLPs only (``mlp.down_proj``); other models get no file and no metric.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.core.io import write_json
from bench.core.lm import n_layers
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.proxies import most_changed_neurons
from bench.stages import JobFacts, Stage, StageContext, register_stage

log = logging.getLogger(__name__)
DEPTHS = (0.1, 0.5, 0.9)
"""Relative depths of Table 1's layers: layer = round(q · (L − 1))."""
TOP = 10


@register_metrics
class NeuronChangeMetrics(MetricSet):
    """Per Table 1 layer: how far training moved the hooked projection's most changed neuron."""

    group, where, per_layer = "neurons", "bench.stages.neurons", True
    top_neuron_change: float | None = metric(
        "max_k ‖W_in,k(policy) − W_in,k(base)‖₂ over the neurons k of the hooked MLP input projection "
        "(LoRA merged), at the depths of the paper's Table 1",
        better="none",
        unit="weight units",
    )


def table1_layers(total: int) -> list[int]:
    """The distinct layers round(q · (L − 1)) for q in ``DEPTHS``."""
    return sorted({round(q * (total - 1)) for q in DEPTHS})


@register_stage
class NeuronsStage(Stage):
    name, version, order, needs = "neurons", "1", 6, ("train",)

    def applies(self, facts: JobFacts) -> bool:
        return facts.method.trains

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {"policy": facts.policy_id(up), "module": facts.suite.hook.module, "depths": DEPTHS, "top": TOP}

    def run(self, ctx: StageContext, work: Path) -> None:
        pol, tok = ctx.policy()
        base = ctx.base()[0]
        total = n_layers(base)
        rows: list[dict[str, Any]] = []
        recs: list[dict[str, Any]] = []
        for layer in table1_layers(total):
            try:
                top = most_changed_neurons(base, pol, tok, layer, hook=ctx.suite.hook.module, top=TOP)
            except ValueError as e:
                log.warning("no Table 1 for %s: %s", ctx.job.id, e)
                break
            rows += [r | {"rel_depth": layer / max(1, total - 1)} for r in top]
            recs += NeuronChangeMetrics(top_neuron_change=top[0]["change"]).records(layer=layer)
        if rows:
            write_json(work / "top_tokens_by_depth.json", rows)
        write_json(work / "metrics.json", recs)
