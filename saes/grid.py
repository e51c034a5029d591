"""Many SAEs per model from one collection pass: the suite's ``[sae]`` table with extra layers and variants.

``[sae]`` describes the *primary* SAE (the leaderboard's ``sae_*`` columns, at the job's hook layer). Two
optional settings ask for more SAEs of the same model, and cost one forward pass over the token set however
many they add (``saes.activations.collect_sites``), plus one lockstep training pass per group of SAEs that
share a batch stream (``saes.train_many``)::

    [sae]
    k = 32
    layers = [7, 23]        # also collect layers 7 and 23 (same hook module) in the same forward
    [sae.variants.k16]      # also train, on every collected layer, the [sae] config with these fields changed
    k = 16
    [sae.variants.wide]
    expansion = 8

SAEs trained = (hook layer + ``layers``) × (primary + ``variants``). Each is scored like the primary
(``saes.score.score_sae``); its records carry ``layer`` and ``sae`` (the variant's name; the primary's is its
architecture) and land in ``metrics.csv`` and ``sae_grid.csv``, not in the leaderboard's columns.
Variants may change how an SAE is built and trained, never the store (its texts, length, split, dtype):
every SAE of a layer reads one store.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from saes.config import SAEConfig

STORE_FIELDS = (
    "max_texts",
    "context_length",
    "heldout_frac",
    "collect_batch_size",
    "drop_special_tokens",
    "use_chat_template",
    "store_dtype",
)
"""Fields that decide the activation store; a variant may not change them (all SAEs of a layer share it)."""


class SAEGridConfig(SAEConfig):
    """The suite's ``[sae]`` table: the primary SAE's config plus the extra layers and variants to train."""

    layers: tuple[int, ...] = Field(default=(), json_schema_extra={"key_when_set": True})
    """Layers (of the [hook] module) collected in the same forward as the job's hook layer; every SAE config is
    trained at each. A job's own hook layer is always collected (listed here, it is not collected twice)."""
    variants: dict[str, dict[str, Any]] = Field(default={}, json_schema_extra={"key_when_set": True})
    """Variant name → [sae] fields it changes (e.g. ``{k = 16}``); each is trained on every collected layer."""

    @model_validator(mode="after")
    def _check_grid(self) -> SAEGridConfig:
        if len(set(self.layers)) != len(self.layers) or any(x < 0 for x in self.layers):
            raise ValueError(f"sae.layers = {list(self.layers)} must be distinct layer indices ≥ 0")
        for name, changes in self.variants.items():
            if not name.replace("_", "").replace("-", "").isalnum() or name == self.architecture:
                raise ValueError(
                    f"sae.variants.{name}: name it with letters, digits, '-' or '_', other than the primary's "
                    f"label {self.architecture!r}"
                )
            if clash := sorted(changes.keys() & {*STORE_FIELDS, "layers", "variants"}):
                raise ValueError(
                    f"sae.variants.{name} changes {clash}, which decide the shared activation store; "
                    "set them in [sae] itself"
                )
            try:
                self.variant(name)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(map(str, err["loc"]))
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"sae.variants.{name}: {where + ': ' if where else ''}{msg}") from None
        return self

    def primary(self) -> SAEConfig:
        """The primary SAE's config (a plain ``SAEConfig``: what ``saes.train``/``saes.score`` take)."""
        return SAEConfig(**self.model_dump(exclude={"layers", "variants"}))

    def variant(self, name: str) -> SAEConfig:
        """[sae] with the variant's fields changed; a table field (``eval``, ``sae_lens_overrides``) is
        merged key by key, so ``[sae.variants.x.eval] ms_top_n = 8`` keeps the rest of ``[sae.eval]``."""
        base = self.model_dump(exclude={"layers", "variants"})
        changes = {
            k: base[k] | v if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in self.variants[name].items()
        }
        return SAEConfig(**(base | changes))

    def configs(self) -> dict[str, SAEConfig]:
        """{label: config}: the primary under its architecture's name (as its records always were), then each
        variant under its own name."""
        return {self.architecture: self.primary()} | {n: self.variant(n) for n in self.variants}

    def all_layers(self, hook_layer: int) -> list[int]:
        """The job's hook layer first, then the other ``layers`` (a suite whose methods sweep ``layer`` may list
        one job's hook layer for the others)."""
        return [hook_layer, *(x for x in self.layers if x != hook_layer)]
