"""``dpo``: −log σ(β[(log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l))]) (TRL ``DPOTrainer``).

With LoRA the reference is the adapter-disabled policy; with full fine-tuning a frozen copy.
"""

from pydantic import Field

from bench.methods._base import Method, TrainConfig, register_method


class DPOMethodConfig(TrainConfig):
    """``dpo``: −log σ(β[(log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l))])."""

    beta: float = Field(0.1, gt=0)
    """β of the DPO loss (paper 0.1)."""


def dpo_args(cfg: DPOMethodConfig, args: dict):
    """TRL ``DPOConfig`` of a DPO-family method (``loss_type = ["sigmoid"]``)."""
    from trl import DPOConfig

    # disable_dropout=False: TRL's default would also zero the LoRA dropout of the paper preset.
    return DPOConfig(**args, beta=cfg.beta, loss_type=["sigmoid"], disable_dropout=False)


def build(cfg: DPOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    from trl import DPOTrainer

    return DPOTrainer(model=model, ref_model=ref_model, args=dpo_args(cfg, args), **kw)


register_method(
    Method(
        "dpo",
        DPOMethodConfig,
        label="DPO",
        order=20,
        uses_reference=True,
        build=build,
        summary="DPO, β = 0.1 (TRL DPOTrainer)",
    )
)
