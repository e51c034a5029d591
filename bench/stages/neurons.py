"""``neurons``: the paper's Table 1 — the MLP neurons whose input weights training changed most, at three
depths, with their top tokens (``bench.proxies.most_changed_neurons``), for every trained policy.

Writes ``top_tokens_by_depth.json`` (per layer, the ``TOP`` most changed neurons ranked by change) and,
per layer, ``top_neuron_change`` = max_k ‖W_in,k(policy) − W_in,k(base)‖₂ (LoRA merged). Weights only:
no forward pass. Llama-style MLPs only (``mlp.down_proj``); other models get no file and no metric.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

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


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
PLANTED_NEURON, PLANTED_NORM = 5, 0.5


def _top_change(ctx, plant: bool) -> float:
    """``top_neuron_change`` at layer 0 of the tiny model against a copy of itself, with (``plant``) one
    neuron's input row moved by a vector of norm ``PLANTED_NORM``; a planted run must also find that neuron."""
    import copy

    import torch

    from bench.core.lm import hook_module

    model, tok = ctx.tiny_model()
    policy = copy.deepcopy(model)
    if plant:
        w = cast(torch.Tensor, hook_module(policy, 0, "mlp.up_proj").weight)
        step = torch.from_numpy(ctx.rng(61).standard_normal(w.shape[1])).to(w.dtype)
        with torch.no_grad():
            w[PLANTED_NEURON] += PLANTED_NORM * step / step.norm()
    top = most_changed_neurons(model, policy, tok, 0, top=1)[0]
    return top["change"] if not plant or top["neuron"] == PLANTED_NEURON else float("nan")


def _register_controls() -> None:
    from bench.core.controls import control

    control("top_neuron_change", "negative", "the policy is the base model", expect="= 0", check=lambda v: v == 0)(
        lambda ctx: _top_change(ctx, plant=False)
    )
    control(
        "top_neuron_change",
        "positive",
        f"one neuron's input row moved by a vector of norm {PLANTED_NORM}",
        expect=f"that neuron, change {PLANTED_NORM} ± 1e-3",
        check=lambda v: abs(v - PLANTED_NORM) <= 1e-3,
    )(lambda ctx: _top_change(ctx, plant=True))


_register_controls()
