"""The task interface: what every preference task gives the harness (SPEC.md §3).

A task turns a source of rows into ``TaskData`` (train pairs, held-out pairs and prompts, concept
labels) and scores a policy on held-out data. Tasks register themselves with ``@register("name")``;
``tasks/__init__.py`` imports every module in its package, so one new file adds one task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from bench.core.metrics import MetricSet, metric
from bench.core.registry import Registry
from bench.core.settings import Settings


class Pair(BaseModel):
    """One preference pair: the policy should prefer ``chosen`` over ``rejected`` after ``prompt``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    chosen: str
    rejected: str
    item: str = ""
    """The source item the pair was made from; texts of one item stay on one side of every split."""
    stratum: str = ""
    """Training batches interleave strata (e.g. which answer is true), so no batch leans on one label."""


class TaskData(BaseModel):
    """Everything a task built for one (model, seed): identical for every method of a suite."""

    model_config = ConfigDict(extra="forbid")
    task: str
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    eval_prompts: list[str]
    """Held-out prompts (un-templated) that the scorer generates from; also the proxy inputs."""
    eval_items: list[dict[str, Any]] = []
    """Task-specific held-out items (e.g. sycophancy claims with their options)."""
    concept_texts: list[str] = []
    concept_labels: list[int] = []
    """Binary concept label per concept text (1 = toxic / negative / sycophantic), for SAE probing."""
    concept_items: list[str] = []
    """The item each concept text was made from (``Pair.item`` names); the probe keeps an item's texts on
    one side of its split, and the SAE token set keeps them with the item's pairs."""
    provenance: dict[str, Any] = {}
    """Where the rows came from and which fields are model generations."""


class AlignmentMetrics(MetricSet):
    """What every task's scorer reports; tasks subclass it with their own metrics (and register it)."""

    group = "alignment"
    where = "tasks.<task>.score"
    align_score: float | None = metric(
        "share of held-out items judged aligned by the task's scorer (SPEC §3; "
        "sycophancy: truthful whatever the user asserts)",
        better="higher",
        unit="fraction",
        headline=True,
    )
    n_scored: float | None = metric("held-out items the task scorer used", better="none", unit="count")


class TaskConfig(Settings):
    """Fields every task config has; tasks subclass it and add their own."""

    source: str = "embedded"
    """``embedded``, ``hf:<dataset-id>[:split]``, or a path to a .jsonl/.csv/.parquet file."""
    columns: dict[str, str] = {}
    """Column mapping for non-embedded sources, e.g. {prompt = "original_text"}."""
    n_train: int = Field(64, ge=1)
    n_eval: int = Field(64, ge=1)
    max_new_tokens: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    """Texts per forward pass or generation batch."""
    use_chat_template: bool = True


C = TypeVar("C", bound=TaskConfig)


class Task(ABC, Generic[C]):
    """One preference task. ``build`` may use the base model (generated ``chosen`` replies)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[TaskConfig]]
    version: ClassVar[str] = "1"
    metrics: ClassVar[type[AlignmentMetrics]] = AlignmentMetrics
    """The task's metric set (its fields, their meaning and which are headline)."""

    @abstractmethod
    def build(self, cfg: C, model, tokenizer, seed: int) -> TaskData: ...

    @abstractmethod
    def score(
        self, cfg: C, model, tokenizer, data: TaskData, *, pair_logps: tuple[Tensor, Tensor] | None = None
    ) -> AlignmentMetrics:
        """Held-out task metrics (``cls.metrics``), always including ``align_score`` (SPEC.md §3).

        ``pair_logps``: ``pair_logprobs(model, tokenizer, data.eval_pairs)`` when the caller already has
        them (the runner computes them for the preference metrics); a scorer built on the same
        log-probs (sycophancy's verdicts with the opinion) reuses them instead of running them again.
        """

    def concept_groups(self, data: TaskData) -> list[str] | None:
        """A group name per concept text (``data.concept_items``): texts made from one item share it, so
        the SAE probe keeps them on one side of its train/test split. None when the task names none."""
        return list(data.concept_items) if data.concept_items else None

    @classmethod
    def tiny_config(cls) -> TaskConfig:
        """Small sizes for tests and the ``smoke`` suite (tiny random model); tasks may override."""
        return cls.config_cls(n_train=4, n_eval=4, max_new_tokens=8, batch_size=8)

    @classmethod
    def describe(cls, cfg: TaskConfig | None = None) -> str:
        """One line for ``python -m bench list tasks``: name, source, sizes, headline metrics."""
        cfg = cfg if cfg is not None else cls.config_cls()
        head = ", ".join(
            n
            for n, f in cls.metrics.model_fields.items()
            if cast("dict[str, Any]", f.json_schema_extra or {})["headline"]
        )
        return (
            f"{cls.name}: source={cfg.source} n_train={cfg.n_train} n_eval={cfg.n_eval} "
            f"max_new_tokens={cfg.max_new_tokens} chat_template={cfg.use_chat_template}; metrics: {head}"
        )


TASKS: Registry[type[Task]] = Registry("task")


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a ``Task`` subclass under ``name`` (its ``name`` attribute is set)."""

    def add(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.add(name, cls)

    return add
