"""``proxies``: the neuron-level monosemanticity proxies of every layer (SPEC.md §4, ``bench.proxies``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.core.errors import NumericalError
from bench.core.io import write_json
from bench.core.lm import READOUT
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.proxies import model_proxies, most_changed_neurons
from bench.stages import JobFacts, Stage, StageContext, register_stage
from bench.texts import PROXY_INPUTS, proxy_pairs

log = logging.getLogger(__name__)


@register_metrics
class ProxyMetrics(MetricSet):
    """Per layer, on the read-out activations z_i of the held-out texts (``bench.proxies``)."""

    group, where, per_layer = "proxies", "bench.proxies", True
    decorrelation: float | None = metric(
        "1 − mean_{i≠j} cos(z_i, z_j) of MLP-input activations of held-out prompt + chosen reply sequences (built as "
        "in training) at their EOS: the token the DecPO penalty reads",
        better="higher",
        unit="ratio [0, 2]",
        headline=True,
    )
    act_variance: float | None = metric(
        "mean_i Var_k(z_ik): variance across hidden units per input, averaged", better="none", unit="activation²"
    )
    mono_scale: float | None = metric("mean_k Var_i(z_ik) / mean_k E_i[z_ik²]", better="higher", unit="ratio [0, 1]")
    decor_loss: float | None = metric(
        "‖Ẑ Ẑᵀ − I‖²_F / N² with row-normalised Z (the DecPO term, evaluated)", better="lower", unit="ratio"
    )
    decorrelation_prompt: float | None = metric(
        "decorrelation of the prompt alone (formatted as in training) at its last token: the paper's figure read-out",
        better="higher",
        unit="ratio [0, 2]",
        headline=True,
    )
    weight_proxy: float | None = metric(
        "median_k ‖W_in,k‖₂ · b_in,k (only models whose MLP input projection has a bias)",
        better="higher",
        unit="weight units",
    )


@register_metrics
class ProxyMeans(MetricSet):
    group, where = "proxies", "bench.stages.proxies"
    decorrelation_mean: float | None = metric(
        "decorrelation averaged over all layers", better="higher", unit="ratio [0, 2]", headline=True
    )
    act_variance_mean: float | None = metric("act_variance averaged over all layers", better="none", unit="activation²")
    mono_scale_mean: float | None = metric("mono_scale averaged over all layers", better="higher", unit="ratio [0, 1]")
    decor_loss_mean: float | None = metric("decor_loss averaged over all layers", better="lower", unit="ratio")
    decorrelation_prompt_mean: float | None = metric(
        "decorrelation_prompt averaged over all layers", better="higher", unit="ratio [0, 2]"
    )


@register_stage
class ProxiesStage(Stage):
    name, version, order, needs = "proxies", "2", 3, ("data", "train")

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {
            "policy": facts.policy_id(up),
            "data": up["data"],
            "proxies": facts.suite.proxies.model_dump(),
            "module": facts.suite.hook.module,
            "inputs": PROXY_INPUTS,
            "readout": READOUT,
        }

    def run(self, ctx: StageContext, work: Path) -> None:

        pol, tok = ctx.policy()
        cfg = ctx.suite.proxies
        pairs = proxy_pairs(ctx.data(), cfg.n_texts)
        kw = dict(
            hook=ctx.suite.hook.module, batch_size=cfg.batch_size, max_length=cfg.max_length, use_chat_template=ctx.chat
        )
        rows = model_proxies(pol, tok, [p.prompt for p in pairs], replies=[p.chosen for p in pairs], **kw)
        prompt_only = model_proxies(pol, tok, [p.prompt for p in pairs], **kw)  # the paper's read-out
        hooked = next(r for r in rows if r["layer"] == ctx.facts.layer)
        if hooked["act_variance"] == 0.0:
            raise NumericalError(
                f"{ctx.job.id}: proxies: every read-out activation at layer {ctx.facts.layer} is the same "
                "(variance 0: the policy collapsed); lower lr or check the train stage"
            )
        recs = []
        for row, prow in zip(rows, prompt_only):
            values = {k: v for k, v in row.items() if k not in ("layer", "rel_depth")}
            recs += ProxyMetrics(**values, decorrelation_prompt=prow["decorrelation"]).records(layer=row["layer"])
        mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        recs += ProxyMeans(
            **{f"{k}_mean": mean(rows, k) for k in ("decorrelation", "act_variance", "mono_scale", "decor_loss")},
            decorrelation_prompt_mean=mean(prompt_only, "decorrelation"),
        ).records()
        write_json(work / "metrics.json", recs)
        if ctx.facts.method.trains:  # the paper's Table 1: most changed neurons at the hook layer
            self._top_tokens(ctx, pol, tok, work)

    def _top_tokens(self, ctx: StageContext, pol, tok, work: Path) -> None:

        try:
            top = most_changed_neurons(ctx.base()[0], pol, tok, ctx.facts.layer, hook=ctx.suite.hook.module)
        except ValueError as e:
            log.warning("no top-token table for %s: %s", ctx.job.id, e)
        else:
            write_json(work / "top_tokens.json", top)
