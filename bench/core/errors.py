"""User-facing errors: a ``MonobenchError`` is printed by the CLI as one line and exit code 2; anything else
is a bug and shows its traceback. Each message says what was wrong, the value seen and how to fix it."""

from __future__ import annotations

import torch


class MonobenchError(Exception):
    """Base of every error caused by the user's input (suite, model, data, files), not by a bug."""


class ConfigError(MonobenchError, ValueError):
    """A suite or setting that cannot be found or does not validate; the message names the key."""


class ModelLoadError(MonobenchError, RuntimeError):
    """A model spec that cannot be loaded; the message says what to install or where to point."""


class TaskDataError(MonobenchError, ValueError):
    """A task's data source cannot be read or lacks what the task needs; the message says how to fix it."""


class StoreError(MonobenchError, RuntimeError):
    """A results folder holds a damaged or foreign file; the message names it."""


class NumericalError(MonobenchError, ValueError):
    """A computation produced NaN/inf or collapsed (e.g. diverged training); the message says where."""


class NonFiniteActivationsError(NumericalError):
    """The hooked module produced NaN or inf activations."""


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``NonFiniteActivationsError`` naming ``what`` if ``x`` holds NaN or inf."""
    bad = ~torch.isfinite(x)
    if bad.any():
        raise NonFiniteActivationsError(
            f"{what}: {int(bad.sum())} of {x.numel()} values are NaN/inf (first at flat index "
            f"{int(bad.flatten().nonzero()[0])}); check the model's dtype (fp16 overflow?) and weights"
        )
