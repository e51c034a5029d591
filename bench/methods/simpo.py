"""``simpo``: −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ); reference-free (the paper's "SimDPO").

TRL ``trl.experimental.cpo.CPOTrainer`` with ``loss_type = "simpo"`` and ``cpo_alpha = 0`` (no NLL term).
"""

import warnings

from pydantic import Field

from bench.methods._base import Method, TrainConfig, register_method


class SimPOMethodConfig(TrainConfig):
    """``simpo``: −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ); reference-free."""

    beta: float = Field(2.0, gt=0)
    """β on the length-averaged log-probability (SimPO paper: 2.0–2.5; 0.1 barely moves it)."""
    gamma: float = Field(1.0, ge=0)
    """Target margin γ (SimPO paper: γ/β ≈ 0.5)."""


def build(cfg: SimPOMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are importing from 'trl.experimental'": pinned, tested here
        from trl.experimental.cpo import CPOConfig, CPOTrainer
    cpo = CPOConfig(
        **args,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=cfg.beta,
        simpo_gamma=cfg.gamma,
        disable_dropout=False,
        remove_unused_columns=False,
    )  # its collator needs every column
    return CPOTrainer(model=model, args=cpo, **kw)


register_method(
    Method(
        "simpo",
        SimPOMethodConfig,
        label="SimPO",
        order=30,
        build=build,
        summary="SimPO, reference-free, length-normalised (TRL CPOTrainer, loss_type=simpo)",
    )
)
