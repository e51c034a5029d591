"""What a stage is: a registered part with a name, a code version, the stages it needs, a ``spec`` (what
decides its result) and a ``run`` (compute it into a folder).

The plan (``bench/plan.py``) walks the registered stages in dependency order and keys each as a hash of
its name, version and spec, where the spec holds the keys of the stages it needs; the runner
(``bench/runner.py``) builds missing keys. A stage's metrics are a ``MetricSet`` written as tidy records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.core.io import read_json, stable_hash
from bench.core.task import TaskData
from bench.methods import METHODS, base_name
from bench.models import resolve_device


@dataclass(frozen=True)
class Job:
    """One leaderboard row: a task, a method (or grid variant) and a seed."""

    task: str
    method: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}__{self.method}__s{self.seed}"


@dataclass(frozen=True)
class JobFacts:
    """What every stage of a job plans from (computed once per job, no model loaded)."""

    suite: Any
    job: Job
    model: dict[str, Any]
    """Content identity of the base model (``bench.identity.model_identity``)."""
    layer: int
    """The layer the job regularises and reads (the method's own, else the suite's [hook])."""

    @property
    def hook(self) -> dict[str, Any]:
        return {"module": self.suite.hook.module, "layer": self.layer}

    @property
    def task_cfg(self) -> dict[str, Any]:
        return self.suite.tasks[self.job.task].key_dump()

    @property
    def method_cfg(self) -> dict[str, Any]:
        return self.suite.methods[self.job.method].key_dump()

    @property
    def method(self):

        return METHODS[base_name(self.job.method)]

    def policy_id(self, up: dict[str, str]) -> str:
        """The policy a measuring stage reads: the train stage's key, or the base / re-initialised model."""
        kind = self.method.policy
        if kind == "trained":
            return up["train"]
        if kind == "random_init":
            return "random_init-" + stable_hash({"model": self.model, "seed": self.job.seed})
        return "base-" + stable_hash(self.model)


@dataclass
class StageContext:
    """What a running stage may use: its job, its plan (every stage key), the store and the model pool."""

    facts: JobFacts
    keys: dict[str, str]
    store: Any
    pool: Any
    progress: bool = False

    @property
    def suite(self):
        return self.facts.suite

    @property
    def job(self) -> Job:
        return self.facts.job

    @property
    def chat(self) -> bool:
        """Whether prompts of this job go through the chat template (the task's ``use_chat_template``)."""
        return self.suite.tasks[self.job.task].use_chat_template

    def path(self, stage: str) -> Path:
        return self.store.path(self.keys[stage])

    def data(self) -> TaskData:
        return TaskData.model_validate(read_json(self.path("data") / "data.json"))

    def policy(self):
        return self.pool.policy(self.facts, self.keys)

    def base(self):
        return self.pool.base(self.job.seed)

    @property
    def device(self) -> str:
        """The torch device this run computes on (``cpu`` or ``cuda``), ``--device auto`` resolved."""
        return str(resolve_device(self.pool.device))


class Stage(ABC):
    """One cached step of a job. Subclasses set ``name``, ``version``, ``needs`` and implement ``spec``/``run``."""

    name: ClassVar[str]
    version: ClassVar[str]
    """Bumped with any change of the stage's definition or numbers (tests/test_golden.py enforces it)."""
    needs: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 50
    """Position among stages whose needs are met (display and execution order)."""
    every_rank: ClassVar[bool] = False
    """Under a multi-process launcher every rank runs it (training); otherwise rank 0 alone."""

    def applies(self, facts: JobFacts) -> bool:
        """Whether the job has this stage (e.g. no train stage for ``base``)."""
        return True

    @abstractmethod
    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        """Everything that decides the stage's result (upstream stage keys included), as JSON."""

    @abstractmethod
    def run(self, ctx: StageContext, work: Path) -> None:
        """Compute the stage into the empty folder ``work`` (``metrics.json`` and its other files)."""

    def complete(self, folder: Path) -> bool:
        """A finished stage whose files later stages need are present (the store checks ``stage.json``)."""
        return True

    def reads(self, facts: JobFacts) -> tuple[str, ...]:
        """The upstream stages whose files ``run`` opens: its ``needs``, plus ``train`` where it loads the
        job's policy (``ctx.policy()``) without needing ``train`` directly. A stage whose files are gone is
        rebuilt only when a stage to build reads it (``bench.runner.Runner.needed``)."""
        return self.needs
