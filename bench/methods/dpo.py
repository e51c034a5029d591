"""``dpo``: −log σ(β[(log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l))]) (TRL ``DPOTrainer``).

With LoRA the reference is the adapter-disabled policy; with full fine-tuning a frozen copy.
"""

from typing import ClassVar

from pydantic import Field, model_validator

from bench.methods._base import Method, TrainConfig, register_method


class DPOMethodConfig(TrainConfig):
    """``dpo``: −log σ(β[(log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l))])."""

    beta: float = Field(0.1, gt=0)
    """β of the DPO loss (paper 0.1)."""
    length_average: bool = Field(False, json_schema_extra={"key_when_set": True})
    """Average each reply's log-ratio over its tokens before the preference difference (the paper's code,
    ``average_log_prob=True``; TRL ``loss_type = "sigmoid_norm"``):
    −log σ(β[(log π(y_w) − log π_ref(y_w))/|y_w| − (log π(y_l) − log π_ref(y_l))/|y_l|]).
    TRL's logged ``rewards/*`` stay the summed log-ratios either way."""
    share_ref_logps: bool = Field(False, json_schema_extra={"key_when_set": True})
    """Read the reference log-probs from the run's memo (``bench.ref_logps``): computed once per distinct
    training row and shared by every DPO-family method of the task and seed (TRL
    ``precompute_ref_log_probs``); equal to the per-step ones up to float rounding."""
    length_average_applies: ClassVar[bool] = True
    shares_ref_logps: ClassVar[bool] = True
    """False for a method of this family whose trainer is not a ``DPOTrainer`` (KTO)."""
    """False for a loss of this family that has its own length handling (IPO) or none (KTO)."""

    @model_validator(mode="after")
    def _length_average_applies(self):
        if self.length_average and not self.length_average_applies:
            raise ValueError(f"length_average is a DPO-loss option; {type(self).__name__} does not take it")
        if self.share_ref_logps and not self.shares_ref_logps:
            raise ValueError(f"share_ref_logps is a DPOTrainer option; {type(self).__name__} does not take it")
        return self


def dpo_args(cfg: DPOMethodConfig, args: dict):
    """TRL ``DPOConfig`` of a DPO-family method (``loss_type = ["sigmoid"]``, or ``["sigmoid_norm"]`` with
    ``length_average``)."""
    from trl import DPOConfig

    loss = "sigmoid_norm" if cfg.length_average else "sigmoid"
    # disable_dropout=False: TRL's default would also zero the LoRA dropout of the paper preset.
    return DPOConfig(
        **args, beta=cfg.beta, loss_type=[loss], disable_dropout=False, precompute_ref_log_probs=cfg.share_ref_logps
    )


def build(cfg: DPOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    from bench.decpo import SharedRefDPOTrainer

    return SharedRefDPOTrainer(model=model, ref_model=ref_model, args=dpo_args(cfg, args), **kw)


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
