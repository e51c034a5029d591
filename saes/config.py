"""The ``[sae]`` table: how activations are collected, how the SAE is trained, how it is scored.

One frozen pydantic model, validated once at the edge (STYLE §1). The same config (and the same
seed, passed separately) is used for every model of a suite, so SAEs are comparable across methods.
``to_sae_lens_config`` maps it onto SAELens's own training-config dataclass for the architecture,
found through SAELens's registry (STYLE §2); ``sae_lens_overrides`` reaches any other field of that
dataclass, and a key that is not one of its fields is an error rather than silently dropped.

Example::

    python -c "from saes.config import SAEConfig; print(SAEConfig(architecture='jumprelu').model_dump())"
"""

from __future__ import annotations

import math
from dataclasses import fields
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, model_validator

from bench.core.settings import Settings

Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "matryoshka_batchtopk"]

# Fields that only some architectures read; setting one for another architecture is an error.
_ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "k": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "l1_coefficient": ("standard",),
    "l0_coefficient": ("jumprelu",),
    "jumprelu_init_threshold": ("jumprelu",),
    "jumprelu_bandwidth": ("jumprelu",),
    "matryoshka_fracs": ("matryoshka_batchtopk",),
}
# SAELens fields monobench sets itself; an override of one of these is refused.
_OWNED = {"architecture", "d_in", "d_sae", "metadata", "device", "dtype", "normalize_activations"}


class SAEEvalConfig(Settings):
    """Parameters of the held-out SAE scores (SPEC.md §5)."""

    dense_threshold: float = 0.1
    """A latent is dense when it is active on more than this share of held-out tokens."""
    decor_threshold: float = 0.3
    """A latent is correlated when max_{j≠i} |Pearson ρ_ij| over held-out tokens reaches this *and* its
    permutation test rejects independence (``decor_alpha``); see ``saes.correlation``."""
    decor_alpha: float = 0.05
    """Level of the per-latent permutation test of independence from every other latent."""
    decor_null_draws: int = 99
    """Permutations per tested latent (p = (1 + #exceedances) / (draws + 1)); ≥ 1/decor_alpha − 1."""
    ms_top_n: int = 32
    """MonoSemanticity Score: number of top-activating held-out tokens per latent."""
    ms_context_tokens: int = 16
    """MonoSemanticity Score: a token's context is the window of this many tokens ending at it."""
    ms_null_draws: int = 99
    """Random context sets per latent forming its own permutation null (p = (1 + #exceedances) / (draws + 1));
    at least 1/ms_alpha − 1, or no latent could ever reach significance."""
    ms_alpha: float = 0.05
    """A latent is interpretable when its MS permutation p-value is ≤ this (see ``saes.monosemanticity``)."""
    latent_max_tokens: int = 8192
    """Held-out tokens (the first, in store order) used for correlations and MS; all are used for
    density, L0 and reconstruction."""
    ce_max_docs: int | None = Field(None, ge=0)
    """Held-out documents used for the CE score (a fixed random subset; None = all; 0 = no CE score: the
    ``sae_ce_*`` columns are left empty, as the ``default`` suite does to fit its budget). It costs three
    full forward passes per document — the dominant scoring cost on CPU — but when zero-ablating the
    hook barely moves the loss (SmolLM2 layer 15 up_proj: ~0.06 nats) the score is a ratio of small
    differences, and 16 documents instead of 40 moved it from 0.45 to 0.16."""
    ce_min_gap: float = 0.05
    """The CE score is left undefined (empty) when zero-ablating the hook raises the loss by less than this
    many nats: a ratio of differences that small is noise. ``sae_ce_delta`` and ``sae_ce_gap`` stay."""
    probe_test_frac: float = 0.3
    """Share of concept texts in the probe's test split (stratified by label, seeded)."""
    probe_split: Literal["grouped", "stratified"] = "grouped"
    """grouped: concept texts the task marks as one item (``Task.concept_groups``: a prompt with each
    of its answers) stay on one side of the split; stratified: SAEBench's per-text split. Per-text
    splits of paired texts put a near-copy with the opposite label in the train split, which pushed
    sycophancy's probe below chance on every seed (0.34–0.45)."""
    probe_max_length: int | None = None
    """Concept texts are truncated to this many tokens before mean-pooling latents; None = the store's
    ``context_length``, so concept texts in the store are pooled from its activations (no forward)."""
    batch_size: int = 16
    """Texts per forward pass for the CE score and the probe activations."""

    @model_validator(mode="after")
    def _ranges(self) -> SAEEvalConfig:
        for name in ("dense_threshold", "decor_threshold", "probe_test_frac"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"sae.eval.{name} = {getattr(self, name)} must be in (0, 1)")
        for alpha, draws in (("ms_alpha", "ms_null_draws"), ("decor_alpha", "decor_null_draws")):
            a, r = getattr(self, alpha), getattr(self, draws)
            if not 0.0 < a < 1.0:
                raise ValueError(f"sae.eval.{alpha} = {a} must be in (0, 1)")
            if a * (r + 1) < 1:
                raise ValueError(
                    f"sae.eval.{draws} = {r} is too few for {alpha} = {a}: the smallest p-value is "
                    f"1/({r} + 1) > {a}; use at least {math.ceil(1 / a) - 1}"
                )
        for name in ("ms_top_n", "ms_context_tokens", "latent_max_tokens", "batch_size"):
            if getattr(self, name) < (2 if name == "ms_top_n" else 1):
                raise ValueError(f"sae.eval.{name} = {getattr(self, name)} is too small")
        if self.probe_max_length is not None and self.probe_max_length < 1:
            raise ValueError(f"sae.eval.probe_max_length = {self.probe_max_length} is too small")
        return self


class SAEConfig(Settings):
    """SAE collection + training config; seed-free (the suite passes one seed for every model)."""

    architecture: Architecture = "topk"
    """SAELens training architecture. batchtopk and matryoshka_batchtopk are saved as jumprelu."""
    expansion: int = 4
    """d_sae = expansion × d_in (d_in = width of the hooked module, 1536 for SmolLM2 up_proj)."""
    k: int = 32
    """Active latents per token (topk) or per token on average over a batch (batchtopk, matryoshka)."""
    l1_coefficient: float = 5.0
    """standard: weight of the L1 penalty Σ_i z_i‖W_dec,i‖ (on normalised activations)."""
    l0_coefficient: float = 1.0
    """jumprelu: weight of the (straight-through) L0 penalty."""
    jumprelu_init_threshold: float = 0.01
    """jumprelu: initial threshold."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: bandwidth of the straight-through estimator."""
    matryoshka_fracs: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    """matryoshka_batchtopk: nested prefix widths as fractions of d_sae; increasing, ending at 1."""
    lr: float = 2e-3
    """Adam learning rate (high for SAELens, because CPU budgets allow only tens of steps)."""
    lr_warm_up_steps: int = 0
    """Linear warm-up steps."""
    lr_decay_steps: int = 0
    """Linear decay-to-zero steps at the end of training."""
    training_tokens: int = 32_768
    """Token budget: training steps = training_tokens // batch_size (the train split is reused
    for several epochs when smaller). CPU cost ≈ 3 · 2 · 2 · d_in · d_sae FLOP per token, about
    0.11 GFLOP/token for SmolLM2 up_proj at expansion 4 (~1–2 min per 32k tokens on 2 cores)."""
    batch_size: int = 1024
    """Activations per training step."""
    normalize_activations: Literal["none", "expected_average_only_in"] = "expected_average_only_in"
    """SAELens input scaling to mean norm √d_in during training, folded into the saved weights, so
    one lr / coefficient fits models whose activation scales differ."""
    n_batches_for_norm_estimate: int = 10
    """Batches used to estimate that scaling factor."""
    dead_feature_window: int = 50
    """Steps without firing after which a latent counts as dead for the topk auxiliary loss."""
    decoder_init_norm: float | None = 0.1
    """Initial decoder row norm (SAELens default)."""
    sae_lens_overrides: dict[str, Any] = {}
    """Any other field of the SAELens training config of ``architecture`` (unknown keys are errors)."""
    max_texts: int = 256
    """Texts collected into the activation store (train + held-out)."""
    context_length: int = 64
    """Tokens per text; longer texts are truncated."""
    heldout_frac: float = 0.2
    """Share of *documents* held out for scoring (split by document, seeded)."""
    collect_batch_size: int = 16
    """Texts per forward pass while collecting."""
    drop_special_tokens: bool = True
    """Leave BOS/EOS/chat-template special tokens out of the store (padding is always left out)."""
    use_chat_template: bool = False
    """Wrap each text in the chat template as a user turn before collecting."""
    store_dtype: Literal["float32", "bfloat16"] = "float32"
    """On-disk activation dtype (bfloat16 halves the store; reading converts to float32)."""
    eval: SAEEvalConfig = SAEEvalConfig()
    """Scoring parameters."""

    @model_validator(mode="after")
    def _check(self) -> SAEConfig:
        for name, archs in _ARCH_FIELDS.items():  # a non-default value the architecture ignores is a mistake
            default = type(self).model_fields[name].default
            if self.architecture not in archs and getattr(self, name) != default:
                raise ValueError(
                    f"sae.{name} is used only by {', '.join(archs)}, but architecture = "
                    f"{self.architecture!r}; remove it or change the architecture"
                )
        for name in (
            "expansion",
            "k",
            "training_tokens",
            "batch_size",
            "max_texts",
            "context_length",
            "collect_batch_size",
            "n_batches_for_norm_estimate",
            "dead_feature_window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"sae.{name} = {getattr(self, name)} must be ≥ 1")
        if self.batch_size > self.training_tokens:
            raise ValueError(
                f"sae.batch_size = {self.batch_size} exceeds sae.training_tokens = "
                f"{self.training_tokens}: no training step would run"
            )
        if not 0.0 < self.heldout_frac < 1.0:
            raise ValueError(f"sae.heldout_frac = {self.heldout_frac} must be in (0, 1)")
        if self.lr <= 0:
            raise ValueError(f"sae.lr = {self.lr} must be > 0")
        if self.lr_warm_up_steps + self.lr_decay_steps > self.n_steps:
            raise ValueError(
                f"sae.lr_warm_up_steps + lr_decay_steps = {self.lr_warm_up_steps + self.lr_decay_steps}"
                f" exceed the {self.n_steps} training steps"
            )
        fr = self.matryoshka_fracs
        if not fr or fr[-1] != 1.0 or any(not 0 < a < b for a, b in pairwise(fr)) or fr[0] <= 0:
            raise ValueError(f"sae.matryoshka_fracs = {list(fr)} must be strictly increasing in (0, 1] and end at 1.0")
        if clash := sorted(self.sae_lens_overrides.keys() & _OWNED):
            raise ValueError(
                f"sae.sae_lens_overrides sets {clash}, which monobench sets itself; "
                "use sae.architecture / sae.expansion / sae.normalize_activations instead"
            )
        return self

    @property
    def n_steps(self) -> int:
        """Training steps: ⌊training_tokens / batch_size⌋ (as SAELens counts them)."""
        return self.training_tokens // self.batch_size

    def d_sae(self, d_in: int) -> int:
        return self.expansion * d_in


def to_sae_lens_config(cfg: SAEConfig, d_in: int, *, device: str = "cpu", metadata: dict[str, Any] | None = None):
    """SAELens ``TrainingSAEConfig`` of ``cfg.architecture`` for inputs of width ``d_in``.

    The class comes from SAELens's registry. ``cfg.sae_lens_overrides`` keys are checked against the
    dataclass fields first (SAELens's own ``from_dict`` would drop unknown keys silently).
    """
    from sae_lens.registry import (
        get_sae_training_class,  # importing sae_lens registers the architectures
    )
    from sae_lens.saes.sae import SAEMetadata

    cfg_cls = get_sae_training_class(cfg.architecture)[1]
    known = {f.name for f in fields(cfg_cls)}
    if extra := sorted(cfg.sae_lens_overrides.keys() - known):
        raise ValueError(
            f"sae.sae_lens_overrides {extra} are not fields of {cfg_cls.__name__}; "
            f"allowed: {', '.join(sorted(known - _OWNED))}"
        )
    d_sae = cfg.d_sae(d_in)
    if cfg.architecture in _ARCH_FIELDS["k"] and cfg.k >= d_sae:
        raise ValueError(
            f"sae.k = {cfg.k} must be smaller than d_sae = {d_sae} (expansion {cfg.expansion} × d_in {d_in})"
        )
    kw: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=d_sae,
        device=device,
        dtype="float32",
        normalize_activations=cfg.normalize_activations,
        decoder_init_norm=cfg.decoder_init_norm,
        metadata=SAEMetadata(**(metadata or {})),
    )
    if cfg.architecture == "topk":
        kw["k"] = cfg.k
    elif cfg.architecture in ("batchtopk", "matryoshka_batchtopk"):
        kw["k"] = float(cfg.k)
    elif cfg.architecture == "standard":
        kw["l1_coefficient"] = cfg.l1_coefficient
    elif cfg.architecture == "jumprelu":
        kw.update(
            l0_coefficient=cfg.l0_coefficient,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        )
    if cfg.architecture == "matryoshka_batchtopk":
        widths = sorted({max(1, round(f * d_sae)) for f in cfg.matryoshka_fracs})
        kw["matryoshka_widths"] = widths
    kw.update(cfg.sae_lens_overrides)
    return cfg_cls(**kw)
