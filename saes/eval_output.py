"""``eval_results.json``: one SAE's held-out scores in SAEBench's result layout (STYLE §4).

Envelope fields follow SAEBench's ``BaseEvalOutput`` (eval_type_id, eval_config, eval_id,
datetime_epoch_millis, eval_result_metrics, eval_result_details, sae_bench_commit_hash, sae_lens_id,
sae_lens_release_id, sae_lens_version, sae_cfg_dict, eval_result_unstructured). Metrics are groups of
flat scalars; per-latent rows go in details. Undefined values (e.g. the probe without concept texts)
are null in JSON and NaN in ``headline_metrics``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import JsonDict

from bench.core.metrics import MetricSet, metric, register_metrics

EVAL_TYPE_ID = "monobench_sae"


DEFAULT_DISPLAY: JsonDict = {"ui_default_display": True}


def _m(text: str, better: str, unit: str, headline: bool = False):
    return metric(text, better=better, unit=unit, headline=headline)  # type: ignore[arg-type]


@register_metrics
class SAEMetrics(MetricSet):
    """The leaderboard's SAE columns (``headline_metrics`` of an ``eval_results.json``), at the hook layer."""

    group, where = "sae", "saes.score.score_sae"
    sae_mse: float | None = _m("mean over held-out tokens of ‖x − x̂‖²", "lower", "activation²")
    sae_explained_variance: float | None = _m(
        "1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over held-out tokens", "higher", "fraction", True
    )
    sae_l0: float | None = _m("mean number of active latents per held-out token", "none", "latents")
    sae_dead_frac: float | None = _m("share of latents never active on held-out tokens", "lower", "fraction", True)
    sae_dense_frac: float | None = _m("share of latents active on > 10 % of held-out tokens", "lower", "fraction")
    sae_ce_score: float | None = _m(
        "(CE_zero-abl − CE_sae) / (CE_zero-abl − CE_clean), SAE spliced in at the hook; "
        "empty when |CE_zero-abl − CE_clean| < 0.05 nats (a ratio of noise) or not computed (ce_max_docs = 0)",
        "higher",
        "fraction",
    )
    sae_ce_delta: float | None = _m(
        "CE_sae − CE_clean: the next-token loss the spliced SAE adds; empty when ce_max_docs = 0", "lower", "nats", True
    )
    sae_ce_gap: float | None = _m(
        "CE_zero-abl − CE_clean: the loss zero-ablating the hook adds; empty when ce_max_docs = 0", "none", "nats"
    )
    sae_frac_decorrelated: float | None = _m(
        "alive latents not correlated with another: not (max_{j≠i} |Pearson ρ_ij| ≥ 0.3 and a per-latent permutation "
        "test of independence rejects at 0.05)",
        "higher",
        "fraction",
        True,
    )
    sae_frac_decorrelated_null: float | None = _m(
        "sae_frac_decorrelated of the same latents each permuted over tokens: its chance level (≥ 0.95 for any "
        "token count)",
        "none",
        "fraction",
        True,
    )
    sae_frac_interpretable: float | None = _m(
        "alive latents whose MonoSemanticity Score (distinct contexts) has a per-latent permutation p ≤ 0.05 (99 "
        "random context sets per latent)",
        "higher",
        "fraction",
        True,
    )
    sae_frac_interp_decor: float | None = _m(
        "alive latents both interpretable and decorrelated", "higher", "fraction", True
    )
    sae_probe_top1: float | None = _m(
        "1-sparse probing accuracy on the task's concept labels (split by item)", "higher", "accuracy", True
    )
    sae_probe_top5: float | None = _m(
        "5-sparse probing accuracy on the task's concept labels (split by item)", "higher", "accuracy"
    )
    sae_n_alive: float | None = _m("latents active at least once on held-out tokens", "none", "count")
    sae_n_heldout_tokens: float | None = _m(
        "held-out tokens scored (each distinct activation once; none seen in training)", "none", "count"
    )


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _nan_to_none(cls, v: Any) -> Any:
        if isinstance(v, dict | list):
            raise ValueError("metric groups hold flat scalars only")
        return None if isinstance(v, float) and not math.isfinite(v) else v


class Reconstruction(_Group):
    mse: float = Field(description="mean_t ‖x_t − x̂_t‖² over held-out tokens", json_schema_extra=DEFAULT_DISPLAY)
    explained_variance: float = Field(
        description="1 − Σ‖x − x̂‖² / Σ‖x − mean x‖², pooled over held-out tokens", json_schema_extra=DEFAULT_DISPLAY
    )
    n_tokens: int = Field(
        description="held-out tokens (each distinct activation once; none shares its prefix with a training token)"
    )


class Sparsity(_Group):
    l0: float = Field(description="mean active latents per held-out token", json_schema_extra=DEFAULT_DISPLAY)
    dead_frac: float = Field(description="share of latents never active on held-out tokens")
    dense_frac: float = Field(description="share of latents active on more than dense_threshold of tokens")
    n_alive: int = Field(description="latents active on at least one held-out token")
    n_tokens: int = Field(description="held-out tokens scored")


class ModelPerformance(_Group):
    ce_score: float | None = Field(
        description="(CE_zero − CE_sae) / (CE_zero − CE_clean)", json_schema_extra=DEFAULT_DISPLAY
    )
    ce_delta: float | None = Field(description="CE_sae − CE_clean (nats): the loss the spliced SAE adds")
    ce_gap: float | None = Field(
        description="CE_zero − CE_clean (nats): the loss zero-ablating the hook adds; the CE "
        "score is undefined below ce_min_gap"
    )
    ce_clean: float | None = Field(description="next-token CE (nats) of the unmodified model")
    ce_sae: float | None = Field(description="CE with the hooked module's output replaced by the SAE reconstruction")
    ce_zero_ablation: float | None = Field(description="CE with the hooked module's output set to zero")
    n_tokens: int = Field(description="predicted held-out tokens the CE is averaged over (0: no CE computed)")


class Monosemanticity(_Group):
    frac_decorrelated: float = Field(
        description="alive latents not correlated: not (max_j |ρ_ij| ≥ decor_threshold "
        "and a permutation p ≤ decor_alpha)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    frac_decorrelated_null: float = Field(
        description="frac_decorrelated of the same latents, each permuted independently over tokens (its chance level)"
    )
    frac_interpretable: float = Field(
        description="alive latents whose MS has a permutation p ≤ ms_alpha", json_schema_extra=DEFAULT_DISPLAY
    )
    frac_interp_decor: float = Field(description="alive latents that are both interpretable and not correlated")
    mean_ms: float | None = Field(description="mean MS over alive latents with a defined MS")
    n_tokens: int = Field(description="held-out tokens used for correlations")
    n_contexts: int = Field(description="distinct context strings among them, used for MS")


class SparseProbing(_Group):
    top1: float | None = Field(
        description="k=1 sparse-probe test accuracy on the task's concept labels", json_schema_extra=DEFAULT_DISPLAY
    )
    top5: float | None = Field(description="k=5 sparse-probe test accuracy")
    n_texts: int = Field(description="concept texts (train + test)")


class SAEMetricCategories(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reconstruction: Reconstruction
    sparsity: Sparsity
    model_performance_preservation: ModelPerformance
    monosemanticity: Monosemanticity
    sparse_probing: SparseProbing


class FeatureDetail(BaseModel):
    """One latent. MS fields are null for dead latents and for latents with < 2 active top tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    feature: int
    density: float
    ms_score: float | None = None
    ms_p_value: float | None = None
    ms_null_p95: float | None = None
    interpretable: bool | None = None
    max_abs_corr: float | None = None
    corr_partner: int | None = None
    corr_p_value: float | None = None
    correlated: bool | None = None

    @field_validator("ms_score", "ms_p_value", "ms_null_p95", "max_abs_corr", "corr_p_value", mode="before")
    @classmethod
    def _nan_to_none(cls, v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v


class SAEEvalOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    eval_type_id: str = EVAL_TYPE_ID
    eval_config: dict[str, Any]
    eval_id: str
    datetime_epoch_millis: int = Field(ge=0, le=9_999_999_999_999)
    eval_result_metrics: SAEMetricCategories
    eval_result_details: list[FeatureDetail]
    sae_bench_commit_hash: str | None = None
    sae_lens_id: str | None = None
    sae_lens_release_id: str | None = None
    sae_lens_version: str | None
    sae_cfg_dict: dict[str, Any]
    eval_result_unstructured: dict[str, Any] | None = None


HEADLINE_KEYS = tuple(SAEMetrics.model_fields)


def headline_metrics(out: SAEEvalOutput) -> dict[str, float]:
    """The flat leaderboard dict: exactly ``HEADLINE_KEYS`` (the fields of ``SAEMetrics``; undefined = NaN)."""
    m = out.eval_result_metrics

    def f(v: float | None) -> float:
        return math.nan if v is None else float(v)

    return {
        "sae_mse": f(m.reconstruction.mse),
        "sae_explained_variance": f(m.reconstruction.explained_variance),
        "sae_l0": f(m.sparsity.l0),
        "sae_dead_frac": f(m.sparsity.dead_frac),
        "sae_dense_frac": f(m.sparsity.dense_frac),
        "sae_ce_score": f(m.model_performance_preservation.ce_score),
        "sae_ce_delta": f(m.model_performance_preservation.ce_delta),
        "sae_ce_gap": f(m.model_performance_preservation.ce_gap),
        "sae_frac_decorrelated": f(m.monosemanticity.frac_decorrelated),
        "sae_frac_decorrelated_null": f(m.monosemanticity.frac_decorrelated_null),
        "sae_frac_interpretable": f(m.monosemanticity.frac_interpretable),
        "sae_frac_interp_decor": f(m.monosemanticity.frac_interp_decor),
        "sae_probe_top1": f(m.sparse_probing.top1),
        "sae_probe_top5": f(m.sparse_probing.top5),
        "sae_n_alive": float(m.sparsity.n_alive),
        "sae_n_heldout_tokens": float(m.reconstruction.n_tokens),
    }
