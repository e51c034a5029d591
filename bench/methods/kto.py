"""``kto``: Kahneman–Tversky optimisation on unpaired replies (Ethayarajh et al. 2024), TRL ``KTOTrainer``.

Each preference pair becomes two rows, the chosen reply labelled desirable and the rejected one
undesirable (``data = "unpaired"``). With r(y) = log π(y|x) − log π_ref(y|x) and z₀ the batch's KL
estimate (mismatched prompt/reply rows), the loss is λ_D(1 − σ(β(r − z₀))) on desirable rows and
λ_U(1 − σ(β(z₀ − r))) on undesirable ones. One optimiser step sees 2 × ``batch_size`` rows.
"""

from typing import ClassVar

from pydantic import Field

from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig


class KTOMethodConfig(DPOMethodConfig):
    """``kto``: λ_D(1 − σ(β(r − z₀))) on chosen replies, λ_U(1 − σ(β(z₀ − r))) on rejected ones."""

    beta: float = Field(0.1, gt=0)
    """β of the KTO loss (TRL default 0.1)."""
    desirable_weight: float = Field(1.0, gt=0)
    """λ_D, the weight of desirable (chosen) rows."""
    undesirable_weight: float = Field(1.0, gt=0)
    """λ_U, the weight of undesirable (rejected) rows."""
    length_average_applies: ClassVar[bool] = False
    shares_ref_logps: ClassVar[bool] = False


def build(cfg: KTOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    from trl import KTOConfig, KTOTrainer

    rows = dict(args, per_device_train_batch_size=2 * args["per_device_train_batch_size"])  # both rows of a pair
    kto = KTOConfig(
        **rows,
        beta=cfg.beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
        disable_dropout=False,
    )
    return KTOTrainer(model=model, ref_model=ref_model, args=kto, **kw)


register_method(
    Method(
        "kto",
        KTOMethodConfig,
        label="KTO",
        order=35,
        data="unpaired",
        uses_reference=True,
        build=build,
        summary="KTO, unpaired chosen/rejected replies, β = 0.1 (TRL KTOTrainer)",
    )
)
