"""TOML text of the tiny three-layer Llama suite that end-to-end tests of suite features start from."""


def tiny_sycophancy_suite(description: str, methods: str = "[methods.base]\n", extra: str = "") -> str:
    """A one-seed sycophancy suite on ``tiny:llama`` (3 layers, hook at layer 1) with a small top-k SAE.

    ``methods`` is the methods' TOML tables; ``extra`` goes into the ``[sae]`` table, before ``[sae.eval]``
    (e.g. ``layers = [2]``); append other tables (``[grid]``) to the returned text."""
    return f"""
description = "{description}"
seeds = [0]
[model]
id = "tiny:llama"
tiny = {{ n_layers = 3, d_model = 64, d_mlp = 128, n_heads = 4, n_kv_heads = 2 }}
[hook]
layer = 1
[proxies]
n_texts = 8
[tasks.sycophancy]
n_train = 4
n_eval = 6
n_eval_unseen = 2
{methods}[sae]
expansion = 2
k = 8
training_tokens = 1024
batch_size = 64
max_texts = 32
context_length = 128
{extra}[sae.eval]
ms_null_draws = 19
"""
