"""``sae``: SAELens SAEs trained on the job's activation store(s), and their held-out scores (SPEC.md §5).

The primary SAE ([sae] at the hook layer) is in ``sae/`` with its scores beside it; its records are the
leaderboard's ``sae_*`` columns. With ``[sae] layers`` / ``[sae.variants.*]`` (``saes.grid``) every other
(layer, config) SAE is in ``grid/L<layer>-<label>/`` and trained in the same lockstep pass where the batch
streams agree (``saes.train_many``); its records carry ``layer`` and ``sae`` = label and ``head = false``
(``metrics.csv`` and ``sae_grid.csv``, not leaderboard columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.io import write_json
from bench.stages import JobFacts, Stage, StageContext, register_stage
from bench.stages.acts import store_dir
from saes.eval_output import SAEMetrics
from saes.score import Concepts, score_sae
from saes.train import train_sae
from saes.train_many import SAEJob, train_saes
from tasks import TASKS


@register_stage
class SAEStage(Stage):
    name, version, order, needs = "sae", "3", 5, ("acts",)  # 3: MS null drawn in blocks of 218 latents

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae is not None

    def reads(self, facts: JobFacts) -> tuple[str, ...]:
        return (*self.needs, "train")  # the policy, for the CE score

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {"acts": up["acts"], "sae": facts.suite.sae.key_dump(), "seed": facts.job.seed}

    def run(self, ctx: StageContext, work: Path) -> None:

        data = ctx.data()
        pol, tok = ctx.policy()
        acts, grid, hook_layer = ctx.path("acts"), ctx.suite.sae, ctx.facts.layer
        device = str(next(pol.parameters()).device)
        primary, configs = grid.architecture, grid.configs()
        where = {
            (layer, label): (work if (layer, label) == (hook_layer, primary) else work / "grid" / f"L{layer}-{label}")
            for layer in grid.all_layers(hook_layer)
            for label in configs
        }
        if len(where) == 1:
            train_sae(acts, configs[primary], work / "sae", seed=ctx.job.seed, device=device)
        else:
            jobs = [
                SAEJob(store_dir(acts, hook_layer, layer), configs[label], out / "sae", seed=ctx.job.seed)
                for (layer, label), out in where.items()
            ]
            train_saes(jobs, device=device)
        concepts = Concepts(data.concept_texts, data.concept_labels, TASKS[ctx.job.task]().concept_groups(data))
        records: list[dict[str, Any]] = []
        for (layer, label), out in where.items():
            scores = score_sae(
                out / "sae",
                store_dir(acts, hook_layer, layer),
                pol,
                tok,
                layer=layer,
                hook=ctx.suite.hook.module,
                concepts=concepts,
                cfg=configs[label],
                out_dir=out,
                seed=ctx.job.seed,
                embed_cache_dir=ctx.store.out / "cache" / "context-embeddings",
            )
            head = {} if out == work else {"head": False}
            records += SAEMetrics(**scores).records(layer=layer, sae=label, **head)
        write_json(work / "metrics.json", records)
