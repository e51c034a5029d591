"""Plan-time checks that need the model's shape: every job's hook module exists at its layer, and the SAE
settings fit that module's width — checked before any stage runs (at ``run`` start and ``--dry-run``).

The model is the base model the plan already has in memory (a tiny model is built from its config; its
weights do not matter here), so nothing is computed twice.
"""

from __future__ import annotations

from torch import nn

from bench.core.errors import ConfigError
from bench.core.lm import decoder_layers, hook_module


def module_width(module: nn.Module) -> int | None:
    """Output width of a hooked module: ``out_features`` of a Linear, ``nf`` of GPT-2's Conv1D (None if
    unknown; the SAE stage then checks against the activations it collected)."""
    for attr in ("out_features", "nf"):
        if isinstance(width := getattr(module, attr, None), int):
            return width
    return None


def check_model_fits(suite, layers: set[int], model: nn.Module) -> None:
    """Raise ConfigError naming the setting when ``suite.hook.module`` is missing at a planned layer, or the
    [sae] table (or one of its variants) does not fit the module's width (e.g. ``k`` ≥ d_sae = expansion × width).
    ``[sae] layers`` are checked with the jobs' layers."""
    grid = getattr(suite, "sae", None)
    extra = set(getattr(grid, "layers", ()))
    n_layers = len(decoder_layers(model))
    if bad := sorted(x for x in extra if x >= n_layers):
        raise ConfigError(f"sae.layers = {sorted(extra)}: {bad} out of range; the model has {n_layers} layers")
    widths = {}
    for layer in sorted(layers | extra):
        try:
            widths[layer] = module_width(hook_module(model, layer, suite.hook.module))
        except ConfigError as e:
            raise ConfigError(f"hook.module = {suite.hook.module!r}: {e}") from None
    from saes.config import to_sae_lens_config

    tables = [("sae" if i == 0 else f"sae.variants.{label}", cfg) for i, (label, cfg) in enumerate(_configs(grid))]
    if (base := _base_sae(suite)) is not None:
        tables.append(("sae_base.sae", base))
    for width in {w for w in widths.values() if w is not None}:
        for name, cfg in tables:
            try:
                to_sae_lens_config(cfg, width)
            except ValueError as e:
                raise ConfigError(
                    f"[{name}] does not fit hook.module {suite.hook.module!r} (width {width}): {e}"
                ) from None


def _configs(grid) -> list:
    if grid is None:
        return []
    return list(grid.configs().items()) if hasattr(grid, "configs") else [(grid.architecture, grid)]


def _base_sae(suite):
    base = getattr(suite, "sae_base", None)
    return None if base is None else base.sae
