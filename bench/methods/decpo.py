"""``decpo``: DPO + λ·‖Z Zᵀ − I‖²_F at the hooked layer (Yan et al. 2024; our normalised reading).

Z stacks the read-out activations of the batch's rows (``bench.lm.READOUT``); ``normalize`` (default)
L2-normalises its rows first, so the term is Σ_{i≠j} cos²(z_i, z_j). The paper's public code computes
another term; that one is ``decpo_paper``.
"""

from pydantic import Field

from bench.decpo import DecPOTrainer
from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig, dpo_args


class DecPOMethodConfig(DPOMethodConfig):
    """``decpo``: DPO + λ·‖Z Zᵀ − I‖²_F on the hooked layer's read-out activations (Yan et al. 2024)."""

    lam: float = Field(1e-3, ge=0, alias="lambda")
    """λ (TOML key ``lambda``). Normalised, the term starts near 180–210 for 8 pairs at SmolLM2 layer 15."""
    normalize: bool = True
    """L2-normalise the rows of Z first (cosine form); false = the raw form (λ = 1e-4 in the paper's text)."""


def build(cfg: DecPOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):

    return DecPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_args(cfg, args),
        layer=layer,
        hook=hook,
        coef=cfg.lam,
        normalize=cfg.normalize,
        **kw,
    )


register_method(
    Method(
        "decpo",
        DecPOMethodConfig,
        label="DecPO",
        order=50,
        uses_reference=True,
        build=build,
        summary="DPO + λ·‖ZZᵀ − I‖²_F (rows normalised) at the hooked layer (Yan et al. 2024)",
    )
)
