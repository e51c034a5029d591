"""``l1``: DPO + λ₁·mean_b ‖z_b‖₁ on the hooked layer's read-out activations (the paper's "L1-Reg")."""

from pydantic import Field

from bench.decpo import L1DPOTrainer
from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig, dpo_args


class L1MethodConfig(DPOMethodConfig):
    """``l1``: DPO + λ₁·mean_b ‖z_b‖₁ on the hooked layer's read-out activations (paper's L1-Reg)."""

    lam: float = Field(1e-4, ge=0, alias="lambda")
    """λ₁ (TOML key ``lambda``). mean ‖z‖₁ starts near 800 at SmolLM2 layer 15 (450 at 0, 2100 at 29)."""


def build(cfg: L1MethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):

    return L1DPOTrainer(
        model=model, ref_model=ref_model, args=dpo_args(cfg, args), layer=layer, hook=hook, coef=cfg.lam, **kw
    )


register_method(
    Method(
        "l1",
        L1MethodConfig,
        label="L1-Reg",
        order=40,
        uses_reference=True,
        build=build,
        summary="DPO + λ₁·mean‖z‖₁ at the hooked layer (the paper's L1-Reg baseline)",
    )
)
