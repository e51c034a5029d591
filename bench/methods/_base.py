"""What a method is (SPEC.md §2): a registered ``Method`` with its frozen, validated config class.

``base`` has no fields (the model as loaded); trained methods share ``TrainConfig`` (optimisation, data,
LoRA, curve settings) and add their loss's own (β, λ, γ). A suite's ``[methods.<name>]`` table is
validated against ``METHODS[name].config_cls``, so an unknown key is an error that names it. Each method
lives in its own module of this package and registers itself with ``register_method``. Example::

    python -c "from bench.methods import METHODS; print(METHODS['decpo'].config_cls().model_dump())"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from bench.core.settings import Settings


class MethodConfig(Settings):
    """Fields every method has (``base`` has none: it is the model as loaded)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_by_name=True, validate_by_alias=True
    )


class TrainConfig(MethodConfig):
    """Optimisation, data and LoRA settings shared by every trained method."""

    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW); 2e-4 suits LoRA on short runs, use ~5e-6 for full fine-tuning."""
    max_steps: int | None = Field(40, ge=1)
    """Optimiser steps; None trains for ``epochs`` passes over the train pairs instead."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the train pairs, used only when ``max_steps`` is None."""
    batch_size: int = Field(8, ge=1)
    """Preference pairs per forward (each pair is two sequences for the DPO family)."""
    grad_accum: int = Field(1, ge=1)
    """Gradient-accumulation steps: an optimiser step sees batch_size × grad_accum pairs."""
    max_length: int = Field(256, ge=8)
    """Max tokens of prompt + reply + EOS (paper preset 256); a training pair that does not fit is an error."""
    max_prompt_length: int = Field(128, ge=4)
    """Max tokens of the formatted prompt (paper preset 128); a longer training prompt is an error."""
    warmup: float = Field(0.1, ge=0, lt=1)
    """Share of the steps with linear learning-rate warm-up."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""
    lora: bool = True
    """Train a LoRA adapter (PEFT); false = full fine-tuning (keeps a frozen reference copy)."""
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")
    """Module names to adapt; on GPT-2-style models q_proj/v_proj map to c_attn and up_proj to c_fc."""
    layer: int | float | None = None
    """Regularised / recorded layer: int index or float fraction of depth; None = the suite's [hook] layer."""
    eval_every: int = Field(10, ge=1)
    """K: record a curve row (held-out metrics, proxies) every K optimiser steps, and at step 0 and the end."""
    curve_pairs: int = Field(16, ge=1)
    """Held-out pairs (the first ones) scored for each curve row; also the number of train pairs scored."""
    curve_prompts: int = Field(32, ge=2)
    """Held-out pairs (prompt + chosen reply, as the proxies stage reads them) whose last-token activations
    give each curve row's neuron proxies."""
    gradient_checkpointing: bool = False
    noise_seed: int = Field(0, ge=0)
    """Offset of the seed of the training randomness — data order and dropout draws — from the job seed
    (the LoRA initialisation keeps the job seed). 0 for every method; the A/A control ``dpo_aa`` uses 1."""

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                f"({self.max_length}) so replies keep at least one token"
            )
        if isinstance(self.layer, float) and not 0.0 <= self.layer < 1.0:
            raise ValueError(
                f"layer = {self.layer} is a float, so it is a fraction of depth and must be in "
                "[0, 1); write an int for a layer index"
            )
        return self


@dataclass(frozen=True)
class Method:
    """A registered method: its config class, how it is shown, and how its policy is made."""

    name: str
    config_cls: type[MethodConfig]
    label: str
    """Name in tables and figures (e.g. "DecPO")."""
    order: int
    """Display order (lower first)."""
    summary: str
    """One line for ``python -m bench list methods``."""
    policy: Literal["base", "trained", "random_init"] = "trained"
    """base: the model as loaded; trained: a train stage; random_init: the base architecture, re-initialised."""
    data: Literal["pairs", "completion", "unpaired"] = "pairs"
    """Training rows: (prompt, chosen, rejected); (prompt, completion = chosen); or unpaired, two rows per pair
    (prompt, completion, label): chosen labelled True, rejected False (KTO)."""
    uses_reference: bool = False
    """Its loss needs a frozen reference policy (DPO family)."""
    build: Callable[..., Any] | None = None
    """(cfg, model, ref_model, args, kw, layer, hook) → a TRL trainer; ``args`` are the shared
    TrainingArguments fields, ``kw`` the trainer keywords (dataset, tokenizer, peft config, callbacks)."""
    control: bool = False
    """A control run (A/A, random initialisation), shown beside the methods it calibrates."""
    evaluates: bool = True
    """Whether the task's scorer runs on it (the eval stage); False for a model whose generations mean nothing."""

    @property
    def trains(self) -> bool:
        return self.policy == "trained"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} already registered by {METHODS[method.name].config_cls.__module__}")
    METHODS[method.name] = method
    return method


def base_name(name: str) -> str:
    """The registered method of a method or grid variant name (``decpo@lambda=0.01`` → ``decpo``)."""
    return name.split("@", 1)[0]


def ordered(names) -> list[str]:
    """Method (and variant) names in display order (unregistered names last, alphabetically)."""
    return sorted(names, key=lambda m: (METHODS[base_name(m)].order if base_name(m) in METHODS else 999, m))
