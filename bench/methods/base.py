"""``base``: the model as loaded, no training (the paper's zero-shot "ICL" row)."""

from bench.methods._base import Method, MethodConfig, register_method

register_method(
    Method(
        "base",
        MethodConfig,
        label="Base",
        order=0,
        policy="base",
        summary="the model as loaded, no training (the paper's zero-shot ICL row)",
    )
)
