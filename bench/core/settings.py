"""The base of every settings table (suite, model, task, method, SAE): strict enough to fail at plan time.

- unknown keys are errors (``extra="forbid"``), values are frozen;
- floats must be finite (``lr = inf`` fails here, not in a JSON writer stages later);
- a boolean is not a number (TOML ``n_train = true`` would otherwise read as 1).

Example::

    class MyConfig(Settings):
        n: int = 4
    MyConfig(n=True)   # ValidationError: n = True is a boolean; expected a number
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _numeric_only(annotation: Any) -> bool:
    """Whether a field's type admits int or float but not bool (``int``, ``float | None``, ``int | float``)."""
    args = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    return bool({int, float} & set(args)) and bool not in args


class Settings(BaseModel):
    """Frozen, strict settings; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)

    def key_dump(self) -> dict[str, Any]:
        """The settings as they enter a stage key: ``model_dump(mode="json")`` less the fields marked
        ``json_schema_extra={"key_when_set": True}`` that sit at their default — an option added later
        leaves the keys (and stored results) of every run that does not set it unchanged."""
        out = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get("key_when_set") and getattr(self, name) == field.default:
                out.pop(name, None)
        return out

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                for key in (name, field.alias):
                    if key in data and isinstance(data[key], bool) and _numeric_only(field.annotation):
                        raise ValueError(f"{key} = {data[key]} is a boolean; expected a number")
        return data
