"""Metrics declared where they are computed: a typed ``MetricSet`` per scorer or stage, a ``metric(...)`` field
per number (meaning, direction, unit, headline flag). ``docs/SCHEMA.md``, the leaderboard's column order and
the report's column groups are generated from the registered sets, so a new metric is one field.

    @register_metrics
    class ToxicityMetrics(AlignmentMetrics):
        group = "alignment"; where = "tasks.toxicity.Toxicity.score"
        tox_rate: float | None = metric("share of continuations with toxicity > 0.5", better="lower",
                                        unit="fraction", headline=True)

A set's ``records(**extra)`` gives the tidy rows a stage writes to ``metrics.json`` (a non-finite or
missing value is left out, so its leaderboard cell stays empty rather than holding a NaN).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.core.registry import Registry

log = logging.getLogger(__name__)
Better = Literal["higher", "lower", "none"]
GROUP_ORDER = (
    "alignment",
    "preference",
    "training",
    "proxies",
    "data",
    "acts",
    "sae",
    "sae_base",
    "sae_transfer",
    "sae_drift",
)
"""Order of the groups in docs/SCHEMA.md, the leaderboard and the report (unknown groups last)."""


def metric(description: str, *, better: Better, unit: str, headline: bool = False) -> Any:
    """A metric field: optional float (None = undefined), documented for the schema, the report and the UI."""
    return Field(
        None, description=description, json_schema_extra={"better": better, "unit": unit, "headline": headline}
    )


class MetricSet(BaseModel):
    """The numbers one scorer or stage produces (subclass, declare fields with ``metric``, register)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    group: ClassVar[str] = ""
    """Schema and report group (alignment, preference, proxies, sae, …)."""
    where: ClassVar[str] = ""
    """The function that computes the set (named in docs/SCHEMA.md)."""
    per_layer: ClassVar[bool] = False
    """Recorded once per layer (metrics.csv has every layer; the leaderboard shows the job's hook layer)."""

    def records(self, **extra: Any) -> list[dict[str, Any]]:
        out = []
        for name, v in self.model_dump().items():
            if v is None or not math.isfinite(float(v)):
                if v is not None:
                    log.warning("metric %s is undefined (%s) here; left empty", name, v)
                continue
            out.append({"metric": name, "value": float(v), **extra})
        return out


@dataclass(frozen=True)
class MetricInfo:
    name: str
    description: str
    better: Better
    unit: str
    headline: bool
    group: str
    where: str
    per_layer: bool


METRIC_SETS: Registry[type[MetricSet]] = Registry("metric set")


def register_metrics(cls: type[MetricSet]) -> type[MetricSet]:
    """Class decorator: add a ``MetricSet`` to the registry (its fields become documented columns)."""
    if not cls.group or not cls.where:
        raise ValueError(f"{cls.__name__} must set the class attributes group and where")
    return METRIC_SETS.add(cls.__name__, cls)


def all_metrics() -> list[MetricInfo]:
    """Every registered metric once, by group (``GROUP_ORDER``), then by the computing function's name, then in
    declaration order, whatever order the modules were imported in; a name in several sets means one thing."""
    seen: dict[str, MetricInfo] = {}
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    for cls in sorted(METRIC_SETS.values(), key=lambda c: (rank.get(c.group, len(rank)), c.group, c.where)):
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra or {}
            info = MetricInfo(
                name,
                f.description or "",
                extra["better"],
                extra["unit"],
                extra["headline"],
                cls.group,
                cls.where,
                cls.per_layer,
            )
            old = seen.setdefault(name, info)
            if (old.description, old.better, old.unit) != (info.description, info.better, info.unit):
                raise ValueError(
                    f"metric {name!r} is declared twice with different meanings ({old.where} and "
                    f"{info.where}); give one of them another name"
                )
            if old is not info and info.where not in old.where:  # one metric computed in several places
                where = ", ".join(sorted({*old.where.split(", "), info.where}))
                seen[name] = MetricInfo(**{**old.__dict__, "where": where})
    return list(seen.values())
