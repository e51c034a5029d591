"""Method configs (SPEC.md §2): one frozen, validated class per method, registered in ``METHODS``.

``base`` has no fields (the model as loaded); trained methods share ``TrainConfig`` (optimisation, data,
LoRA, curve settings) and add their loss's own (β, λ, γ). A suite's ``[methods.<name>]`` table is
validated against ``METHODS[name]``, so an unknown key is an error that names it. Example::

    python -c "from bench.methods import METHODS; print(METHODS['decpo']().model_dump())"
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MethodConfig(BaseModel):
    """Fields every method has (``base`` has none: it is the model as loaded)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              validate_by_name=True, validate_by_alias=True)


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
    """Max tokens of prompt + reply (paper preset 256); longer replies are cut at the end."""
    max_prompt_length: int = Field(128, ge=4)
    """Max tokens of the chat-formatted prompt (paper preset 128); longer prompts keep their end."""
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

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                             f"({self.max_length}) so replies keep at least one token")
        if isinstance(self.layer, float) and not 0.0 <= self.layer < 1.0:
            raise ValueError(f"layer = {self.layer} is a float, so it is a fraction of depth and must be in "
                             "[0, 1); write an int for a layer index")
        return self


class SFTMethodConfig(TrainConfig):
    """``sft``: NLL of the chosen reply given the prompt."""


class DPOMethodConfig(TrainConfig):
    """``dpo``: −log σ(β[(log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l))])."""

    beta: float = Field(0.1, gt=0)
    """β of the DPO loss (paper 0.1)."""


class DecPOMethodConfig(DPOMethodConfig):
    """``decpo``: DPO + λ·‖Z Zᵀ − I‖²_F on the hooked layer's last-token activations (Yan et al. 2024)."""

    lam: float = Field(1e-3, ge=0, alias="lambda")
    """λ (TOML key ``lambda``). Normalised, the term starts near 180–210 for 8 pairs at SmolLM2 layer 15."""
    normalize: bool = True
    """L2-normalise the rows of Z first (cosine form); false = the paper's raw form (λ = 1e-4 there)."""


class L1MethodConfig(DPOMethodConfig):
    """``l1``: DPO + λ₁·mean_b ‖z_b‖₁ on the hooked layer's last-token activations (paper's L1-Reg)."""

    lam: float = Field(1e-4, ge=0, alias="lambda")
    """λ₁ (TOML key ``lambda``). mean ‖z‖₁ starts near 800 at SmolLM2 layer 15 (450 at 0, 2100 at 29)."""


class SimPOMethodConfig(TrainConfig):
    """``simpo``: −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ); reference-free."""

    beta: float = Field(2.0, gt=0)
    """β on the length-averaged log-probability (SimPO paper: 2.0–2.5; 0.1 barely moves it)."""
    gamma: float = Field(1.0, ge=0)
    """Target margin γ (SimPO paper: γ/β ≈ 0.5)."""


METHODS: dict[str, type[MethodConfig]] = {}


def _register(name: str, cls: type[MethodConfig]) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} already registered by {METHODS[name].__module__}")
    METHODS[name] = cls


for _name, _cls in [("base", MethodConfig), ("sft", SFTMethodConfig), ("dpo", DPOMethodConfig),
                    ("decpo", DecPOMethodConfig), ("simpo", SimPOMethodConfig), ("l1", L1MethodConfig)]:
    _register(_name, _cls)
