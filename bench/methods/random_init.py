"""``random_init``: a control — the base architecture with freshly initialised weights (seeded).

It runs the same representation stages as every other method (proxies, acts, SAE; not the task scorer,
whose generations from random weights would be noise at full cost), so the report
shows what each score is on a model that learned nothing: SAEs on random transformers look
interpretable too, and a metric that cannot tell this model apart from a trained one measures the data
or the method, not the model's features.
"""

from bench.methods._base import Method, MethodConfig, register_method

register_method(
    Method(
        "random_init",
        MethodConfig,
        label="Random init (control)",
        order=90,
        policy="random_init",
        control=True,
        evaluates=False,
        summary="control: the base architecture re-initialised (seeded), no training",
    )
)
