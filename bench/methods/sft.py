"""``sft``: NLL of the chosen reply given the prompt (TRL ``SFTTrainer``, loss on the completion only)."""

from bench.methods._base import Method, TrainConfig, register_method


class SFTMethodConfig(TrainConfig):
    """``sft``: NLL of the chosen reply given the prompt."""


def build(cfg: SFTMethodConfig, model, ref_model, args: dict, kw: dict, layer: int, hook: str):
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(model=model, args=SFTConfig(**args, completion_only_loss=True), **kw)


register_method(
    Method(
        "sft",
        SFTMethodConfig,
        label="SFT",
        order=10,
        data="completion",
        build=build,
        summary="NLL of the chosen reply given the prompt",
    )
)
