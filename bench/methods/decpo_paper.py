"""``decpo_paper``: the DecPO term exactly as the paper's public code computes it, beside our reading.

Yan et al. 2024 (arXiv 2406.17969), repository ``hanqi-qi/Revisit_monosemanticity`` (commit ``2da99fb``,
``DPOTrainer.py``, ``CustomDPOTrainer``): Z = |up_proj output| of one layer at one position, rows
``[0::2]`` of the stacked [chosen…, rejected…] batch, and the term (Z Zᵀ − I).mean() — not normalised,
not squared — with weight 0.001 (the code ignores its ``sparse_lambda`` argument). Since Z ≥ 0,

    (Z Zᵀ − I).mean() = (1/N²)(Σ_ij z_i·z_j − N) = ‖mean_i z_i‖² − 1/N,

a penalty on the size of the mean absolute activation, not on the overlap between rows (``decpo`` is
our normalised Frobenius reading). The code reads index −1 of the padded batch, which under the right
padding of the TRL version it calls is a pad token for every row shorter than the longest;
``position = "last_real"`` (default) reads each row's last real token (the EOS after its reply, as the
proxies do), ``position = "batch_last"`` reproduces the code's index.
"""

from typing import Literal

import torch
from beartype import beartype
from jaxtyping import Float, jaxtyped
from pydantic import Field
from torch import Tensor

from bench.decpo import ActivationRegularisedDPOTrainer
from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig, dpo_args


@jaxtyped(typechecker=beartype)
def paper_decorrelation_term(z: Float[Tensor, "row d"]) -> Float[Tensor, ""]:
    """(|Z'| |Z'|ᵀ − I).mean() over rows Z' = z[0::2] (of TRL's stacked chosen-then-rejected rows), in
    float32; equals ‖mean_i |z'_i|‖² − 1/N for N = len(Z') (module docstring)."""
    a = z[0::2].float().abs()
    return (a @ a.T - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)).mean()


class PaperDecPOTrainer(ActivationRegularisedDPOTrainer):
    """L_DPO + λ·(|Z'||Z'|ᵀ − I).mean() (``paper_decorrelation_term``)."""

    penalty_name = "decor_paper"

    def __init__(self, *args, batch_last: bool = False, **kwargs):
        self.read_batch_last = batch_last
        super().__init__(*args, **kwargs)

    def penalty(self, z: Tensor) -> Tensor:
        return paper_decorrelation_term(z)


class DecPOPaperMethodConfig(DPOMethodConfig):
    """``decpo_paper``: DPO + λ·(|Z'||Z'|ᵀ − I).mean(), the public code's term (module docstring)."""

    lam: float = Field(1e-3, ge=0, alias="lambda")
    """λ (TOML key ``lambda``): the public code's hard-coded weight 0.001."""
    position: Literal["last_real", "batch_last"] = "last_real"
    """Which token Z is read at: each row's last real token, or index −1 of the padded batch (the code's)."""


def build(cfg: DecPOPaperMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    return PaperDecPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_args(cfg, args),
        layer=layer,
        coef=cfg.lam,
        hook=hook,
        batch_last=cfg.position == "batch_last",
        **kw,
    )


register_method(
    Method(
        "decpo_paper",
        DecPOPaperMethodConfig,
        label="DecPO (paper code)",
        order=55,
        uses_reference=True,
        build=build,
        summary="DPO + 0.001·(|Z||Z|ᵀ − I).mean() on rows [0::2], the paper's public-code term",
    )
)
