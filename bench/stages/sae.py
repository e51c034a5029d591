"""``sae``: a SAELens SAE trained on the job's activation store, and its held-out scores (SPEC.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.io import write_json
from bench.stages import JobFacts, Stage, StageContext, register_stage
from saes.eval_output import SAEMetrics
from saes.score import Concepts, score_sae
from saes.train import train_sae
from tasks import TASKS


@register_stage
class SAEStage(Stage):
    name, version, order, needs = "sae", "3", 5, ("acts",)  # 3: MS null drawn in blocks of 218 latents

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae is not None

    def reads(self, facts: JobFacts) -> tuple[str, ...]:
        return (*self.needs, "train")  # the policy, for the CE score

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {"acts": up["acts"], "sae": facts.suite.sae.model_dump(mode="json"), "seed": facts.job.seed}

    def run(self, ctx: StageContext, work: Path) -> None:

        data = ctx.data()
        pol, tok = ctx.policy()
        acts = ctx.path("acts")
        sae_dir = train_sae(
            acts, ctx.suite.sae, work / "sae", seed=ctx.job.seed, device=str(next(pol.parameters()).device)
        )
        head = score_sae(
            sae_dir,
            acts,
            pol,
            tok,
            layer=ctx.facts.layer,
            hook=ctx.suite.hook.module,
            concepts=Concepts(data.concept_texts, data.concept_labels, TASKS[ctx.job.task]().concept_groups(data)),
            cfg=ctx.suite.sae,
            out_dir=work,
            seed=ctx.job.seed,
            embed_cache_dir=ctx.store.out / "cache" / "context-embeddings",
        )
        write_json(
            work / "metrics.json", SAEMetrics(**head).records(layer=ctx.facts.layer, sae=ctx.suite.sae.architecture)
        )
