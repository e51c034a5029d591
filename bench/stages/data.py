"""``data``: the task's preference data for (base model, seed) — the same for every method of a task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.core.io import write_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.identity import source_identity
from bench.stages import JobFacts, Stage, StageContext, register_stage
from tasks import TASKS


@register_metrics
class DataMetrics(MetricSet):
    group = "data"
    where = "bench.stages.data"
    n_train_pairs: float | None = metric("training preference pairs built for the task", better="none", unit="count")
    n_eval_pairs: float | None = metric("held-out preference pairs", better="none", unit="count")
    n_eval_prompts: float | None = metric("held-out prompts the scorer uses", better="none", unit="count")


@register_stage
class DataStage(Stage):
    name, version, order = "data", "2", 0

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:

        cfg = facts.task_cfg
        return {
            "task": facts.job.task,
            "task_version": TASKS[facts.job.task].version,
            "task_cfg": cfg,
            "model": facts.model,
            "seed": facts.job.seed,
            "source": source_identity(cfg["source"]),
        }

    def run(self, ctx: StageContext, work: Path) -> None:

        model, tok = ctx.base()
        with torch.random.fork_rng():  # generations are seeded without touching the caller's RNG
            torch.manual_seed(ctx.job.seed)
            data = TASKS[ctx.job.task]().build(ctx.suite.tasks[ctx.job.task], model, tok, ctx.job.seed)
        write_json(work / "data.json", data.model_dump(mode="json"))
        write_json(
            work / "metrics.json",
            DataMetrics(
                n_train_pairs=len(data.train_pairs),
                n_eval_pairs=len(data.eval_pairs),
                n_eval_prompts=len(data.eval_prompts),
            ).records(),
        )
