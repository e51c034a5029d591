"""Alignment methods (SPEC.md §2). Importing the package registers every method module in it.

One module per method: its config class (fields and their meaning) and a ``register_method`` call
naming its label, display order, policy kind and how it builds its TRL trainer. A new method is one
new file here plus, where it runs, one ``[methods.<name>]`` table in a suite.
"""

import importlib
import pkgutil

from bench.methods._base import (
    METHODS,
    Method,
    MethodConfig,
    TrainConfig,
    base_name,
    ordered,
    register_method,
)

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

from bench.methods.decpo import DecPOMethodConfig  # noqa: E402  (after the registry is filled)
from bench.methods.dpo import DPOMethodConfig  # noqa: E402

__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "TrainConfig",
    "register_method",
    "DPOMethodConfig",
    "DecPOMethodConfig",
    "base_name",
    "ordered",
]
