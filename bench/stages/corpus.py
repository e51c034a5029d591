"""``corpus_acts`` and ``base_sae``: the base model's activation store of the generic corpus, and the base SAE
trained on it once per (base model, hook, layer, [sae_base]) — shared by every task, method and seed of a
suite (their specs name no task, method or job seed, so every job plans the same key and reuses it).

``base_sae`` scores the SAE on the store's held-out tokens (split by document, each distinct prefix once:
``saes.heldout``) and keeps SAELens's training weights for the fine-tunes (``saes.finetune``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import stable_hash, write_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.stages import JobFacts, Stage, StageContext, register_stage
from bench.stages.acts import check_not_collapsed
from saes import metrics as M
from saes.activations import StoreOptions, collect_activations
from saes.ce import ce_losses
from saes.corpus import build_corpus
from saes.heldout import audit_store
from saes.score import encode_heldout, load_sae
from saes.store import ActivationStore
from saes.train import train_sae


@register_metrics
class BaseSAEMetrics(MetricSet):
    """The shared base SAE on the base model's held-out corpus tokens (the same value on every row of a layer)."""

    group, where = "sae_base", "bench.stages.corpus.BaseSAEStage"
    sae_base_explained_variance: float | None = metric(
        "1 − ‖x − x̂‖² / ‖x − mean x‖² of the base SAE on the base model's held-out corpus tokens",
        better="higher",
        unit="fraction",
        headline=True,
    )
    sae_base_dead_frac: float | None = metric(
        "share of base-SAE latents never active on the held-out corpus tokens", better="lower", unit="fraction"
    )
    sae_base_l0: float | None = metric(
        "mean active base-SAE latents per held-out corpus token", better="none", unit="latents"
    )
    sae_base_ce_score: float | None = metric(
        "(CE_zero − CE_sae) / (CE_zero − CE_clean) of the base SAE spliced into the base model, held-out corpus "
        "documents (empty when zero-ablation moves the loss by < sae.eval.ce_min_gap nats)",
        better="higher",
        unit="fraction",
    )
    sae_base_n_heldout_tokens: float | None = metric(
        "held-out corpus tokens the base SAE is scored on (distinct prefixes, none seen in training)",
        better="none",
        unit="count",
    )
    sae_base_n_train_tokens: float | None = metric(
        "distinct corpus tokens the base SAE could train on", better="none", unit="count"
    )


def base_policy_id(facts: JobFacts) -> str:
    """The base model as a measuring stage names it (``JobFacts.policy_id`` of a ``base`` job)."""
    return "base-" + stable_hash(facts.model)


@register_stage
class CorpusActsStage(Stage):
    name, version, order = "corpus_acts", "1", 7

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        store = StoreOptions.of(cfg.sae)
        return {
            "policy": base_policy_id(facts),
            "hook": facts.hook,
            "corpus": cfg.corpus.key_dump(),
            "store": {k: v for k, v in store.__dict__.items() if k != "max_texts"},
            "seed": cfg.seed,
        }

    def complete(self, folder: Path) -> bool:
        return all((folder / f).exists() for f in ("manifest.json", "acts.npy", "doc_tokens.npy"))

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        texts, provenance = build_corpus(cfg.corpus)
        model, tok = ctx.base()
        options = StoreOptions.of(cfg.sae)
        options = StoreOptions(**{**options.__dict__, "max_texts": None})
        collect_activations(
            model,
            tok,
            texts,
            layer=ctx.facts.layer,
            hook=ctx.suite.hook.module,
            out_dir=work,
            seed=cfg.seed,
            options=options,
        )
        store = ActivationStore(work)
        check_not_collapsed(store, f"{ctx.job.id} (base model, corpus)")
        audit = audit_store(store)
        if audit["leaks"] or audit["twins"]:
            raise RuntimeError(f"corpus store {work.name}: held-out leaks {audit}; this is a bug")
        write_json(work / "corpus.json", provenance)
        write_json(work / "metrics.json", [])


@register_stage
class BaseSAEStage(Stage):
    name, version, order, needs = "base_sae", "1", 8, ("corpus_acts",)

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        return {
            "acts": up["corpus_acts"],
            "sae": cfg.sae.model_dump(mode="json"),
            "seed": cfg.seed,
            "ce_docs": cfg.ce_docs,
        }

    def complete(self, folder: Path) -> bool:
        return (folder / "sae" / "training_state.safetensors").is_file()

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        model, _ = ctx.base()
        store = ActivationStore(ctx.path("corpus_acts"))
        device = str(next(model.parameters()).device)
        sae_dir = train_sae(store.path, cfg.sae, work / "sae", seed=cfg.seed, device=device, keep_training_state=True)
        sae = load_sae(sae_dir, device)
        x = store.heldout_acts()
        x_hat, density, _ = encode_heldout(sae, x, 1)
        np.save(work / "density.npy", density.numpy())
        ce = None
        if cfg.ce_docs:
            hook = ctx.suite.hook.module
            clean, spliced, zero, _ = ce_losses(
                model, store, sae, layer=ctx.facts.layer, hook=hook, max_docs=cfg.ce_docs
            )
            ce = M.sae_ce_score(clean, spliced, zero, min_gap=cfg.sae.eval.ce_min_gap)
        head = BaseSAEMetrics(
            sae_base_explained_variance=M.sae_explained_variance(x, x_hat),
            sae_base_dead_frac=M.sae_dead_frac(density.float()),
            sae_base_l0=M.sae_l0(density.float()),
            sae_base_ce_score=ce,
            sae_base_n_heldout_tokens=store.n_heldout,
            sae_base_n_train_tokens=store.n_train,
        )
        write_json(work / "metrics.json", head.records(layer=ctx.facts.layer, sae=cfg.sae.architecture))
