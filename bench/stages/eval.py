"""``eval``: the task's scorer on held-out data, and the held-out DPO implicit-reward metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.core.io import write_json
from bench.core.preference import PreferenceMetrics, pair_logprobs, preference_metrics
from bench.stages import JobFacts, Stage, StageContext, register_stage
from tasks import TASKS


@register_stage
class EvalStage(Stage):
    name, version, order, needs = "eval", "2", 2, ("data", "train")

    def applies(self, facts: JobFacts) -> bool:
        return facts.method.evaluates

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {
            "policy": facts.policy_id(up),
            "data": up["data"],
            "task_cfg": facts.task_cfg,
            "eval": facts.suite.eval.model_dump(),
        }

    def run(self, ctx: StageContext, work: Path) -> None:
        """Task metrics, then (for every policy but the base model, which is its own reference) the preference
        metrics against the base model, whose pair log-probs are computed once per data stage."""

        data = ctx.data()
        pol, tok = ctx.policy()
        kw = dict(batch_size=ctx.suite.eval.batch_size, use_chat_template=ctx.chat)
        with torch.random.fork_rng():
            torch.manual_seed(ctx.job.seed)
            pol_logps = pair_logprobs(
                pol, tok, data.eval_pairs, **kw
            )  # shared by the scorer and the preference metrics
            task = TASKS[ctx.job.task]().score(ctx.suite.tasks[ctx.job.task], pol, tok, data, pair_logps=pol_logps)
        recs = task.records()
        if ctx.facts.method.policy == "base":
            ctx.pool.remember_reference(
                ctx.keys["data"], ctx.job.seed, data.eval_pairs, kw, pol_logps, version=self.version
            )
        else:
            ref = ctx.pool.reference_logps(ctx.keys["data"], ctx.job.seed, data.eval_pairs, kw, version=self.version)
            recs += PreferenceMetrics(
                **preference_metrics(
                    pol,
                    tok,
                    data.eval_pairs,
                    beta=ctx.suite.eval.beta,
                    policy_logps=pol_logps,
                    reference_logps=ref,
                    **kw,
                )
            ).records()
        write_json(work / "metrics.json", recs)
