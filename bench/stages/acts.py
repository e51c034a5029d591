"""``acts``: the activation store of the job's policy at the hook, over the task's SAE token set (and, when
``[sae] layers`` lists more layers, one store per extra layer in ``layer<L>/``, from the same forward pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.errors import NumericalError
from bench.core.io import write_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.stages import JobFacts, Stage, StageContext, register_stage
from bench.texts import sae_documents
from saes.activations import ActivationStore, collect_activations, collect_sites
from saes.heldout import audit_store


@register_metrics
class ActsMetrics(MetricSet):
    group, where = "acts", "bench.stages.acts / saes.heldout"
    acts_n_train_tokens: float | None = metric(
        "SAE training tokens: distinct prefixes of the training split", better="none", unit="count"
    )
    acts_n_heldout_tokens: float | None = metric(
        "held-out tokens: prefixes found nowhere in training and once in the held-out split",
        better="none",
        unit="count",
    )
    acts_n_duplicate_tokens: float | None = metric(
        "stored tokens whose prefix repeats an earlier one (same activation; never trained on or scored)",
        better="none",
        unit="count",
    )
    acts_heldout_leaks: float | None = metric(
        "audit: held-out tokens whose 4+-token prefix occurs in training (must be 0)", better="lower", unit="count"
    )
    acts_heldout_twins: float | None = metric(
        "audit: held-out tokens sharing their prefix with another held-out token (must be 0)",
        better="lower",
        unit="count",
    )


@register_stage
class ActsStage(Stage):
    name, version, order, needs = "acts", "2", 4, ("data", "train")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {
            "policy": facts.policy_id(up),
            "data": up["data"],
            "hook": facts.hook,
            "sae": {k: v for k, v in facts.suite.sae.key_dump().items() if k != "variants"},
            "seed": facts.job.seed,
        }

    def complete(self, folder: Path) -> bool:
        """Committed results keep the store's records, not its arrays or tokenizer: without them it is rebuilt
        when a stage that reads it (the SAE) must be built."""
        stores = [folder, *sorted(folder.glob("layer*"))]
        files = ("manifest.json", "acts.npy", "doc_tokens.npy", "tokenizer")
        return all((d / f).exists() for d in stores for f in files)

    def run(self, ctx: StageContext, work: Path) -> None:

        pol, tok = ctx.policy()
        texts, groups = sae_documents(ctx.data())
        cfg, layer = ctx.suite.sae, ctx.facts.layer
        if cfg.layers:
            layers = cfg.all_layers(layer)
            sites = [(x, ctx.suite.hook.module) for x in layers]
            dirs = [store_dir(work, layer, x) for x in layers]
            collect_sites(
                pol, tok, texts, sites=sites, out_dirs=dirs, cfg=cfg.primary(), groups=groups, seed=ctx.job.seed
            )
            for d in dirs[1:]:
                check_not_collapsed(ActivationStore(d), f"{ctx.job.id} (layer {d.name})")
        else:
            collect_activations(
                pol, tok, texts, groups=groups, layer=layer, hook=ctx.suite.hook.module, out_dir=work,
                cfg=cfg.primary(), seed=ctx.job.seed,
            )  # fmt: skip
        store = ActivationStore(work)
        check_not_collapsed(store, ctx.job.id)
        audit = audit_store(store)
        if audit["leaks"] or audit["twins"]:
            raise RuntimeError(
                f"activation store {work.name}: {audit['leaks']} held-out tokens share a 4+-token "
                f"prefix with training and {audit['twins']} are twins; this is a bug"
            )
        m = store.manifest
        write_json(
            work / "metrics.json",
            ActsMetrics(
                acts_n_train_tokens=m["n_train_tokens"],
                acts_n_heldout_tokens=m["n_heldout_tokens"],
                acts_n_duplicate_tokens=m["n_duplicate_tokens"],
                acts_heldout_leaks=audit["leaks"],
                acts_heldout_twins=audit["twins"],
            ).records(),
        )


def store_dir(folder: Path, hook_layer: int, layer: int) -> Path:
    """Where the acts stage in ``folder`` keeps the store of ``layer``: the folder itself for the hook layer."""
    return folder if layer == hook_layer else folder / f"layer{layer}"


def check_not_collapsed(store: ActivationStore, job: str) -> None:
    """All-constant activations (a collapsed policy, e.g. after a diverged run) would give SAEs and scores
    of nothing: fail the job's acts stage, naming it."""
    x = store.heldout_acts()
    if x.numel() and float(x.float().std()) == 0.0:
        raise NumericalError(
            f"{job}: acts: every held-out activation equals {float(x.flatten()[0]):.4g} (the policy collapsed); "
            "lower lr or check the train stage"
        )
