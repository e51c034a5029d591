"""``ipo``: (h − 1/(2τ))², h = (log π(y_w)−log π_ref(y_w)) − (log π(y_l)−log π_ref(y_l)) (Azar et al. 2023).

TRL ``DPOTrainer`` with ``loss_type = ["ipo"]``; τ is TRL's ``beta``. For IPO, TRL divides each reply's
summed log-ratio by its token count (its source says the IPO authors confirmed this form), so h is a
difference of per-token log-ratios.
"""

from typing import ClassVar

from pydantic import Field

from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig


class IPOMethodConfig(DPOMethodConfig):
    """``ipo``: (h − 1/(2τ))², the squared distance of the preference log-ratio from its target 1/(2τ)."""

    beta: float = Field(0.1, gt=0)
    """τ of the IPO loss (TRL's ``beta``): the target log-ratio difference is 1/(2τ)."""
    length_average_applies: ClassVar[bool] = False


def build(cfg: IPOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    from trl import DPOConfig

    from bench.decpo import SharedRefDPOTrainer

    dpo = DPOConfig(
        **args, beta=cfg.beta, loss_type=["ipo"], disable_dropout=False, precompute_ref_log_probs=cfg.share_ref_logps
    )
    return SharedRefDPOTrainer(model=model, ref_model=ref_model, args=dpo, **kw)


register_method(
    Method(
        "ipo",
        IPOMethodConfig,
        label="IPO",
        order=22,
        uses_reference=True,
        build=build,
        summary="IPO, τ = 0.1 (TRL DPOTrainer, loss_type=ipo)",
    )
)
