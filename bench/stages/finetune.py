"""``ft_base`` and ``sae_ft``: the base SAE fine-tuned on the base model's and on the job's model's corpus
activations, and how far each latent drifted (issue 18; ``saes.finetune``, ``saes.diffing``).

``ft_base`` fine-tunes on the base model's own train rows (shared by every job). ``sae_ft`` fine-tunes on the
job's model's activations at the same rows, with the same seed and steps, so the two differ only in the model:
the drift of latent i is measured between them, cos(W_dec,i(sae_ft), W_dec,i(ft_base)). For the base model
both are the same computation, and the drift is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.io import write_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.stages import JobFacts, Stage, StageContext, register_stage
from saes import metrics as M
from saes.diffing import drift_metrics
from saes.finetune import finetune_sae
from saes.replay import ReplayedRows, pick_rows
from saes.score import encode_heldout, load_sae
from saes.store import ActivationStore


@register_metrics
class DriftMetrics(MetricSet):
    """The base SAE fine-tuned on this model vs fine-tuned on the base model (same rows, seed and steps)."""

    group, where = "sae_drift", "bench.stages.finetune.FinetuneStage / saes.diffing"
    sae_drift_frac: float | None = metric(
        "share of base-SAE latents alive on the base model whose decoder direction, fine-tuned on this model, has "
        "cosine < sae_base.drift_threshold with the one fine-tuned on the base model",
        better="none",
        unit="fraction",
        headline=True,
    )
    sae_drift_decoder: float | None = metric(
        "mean 1 − cos(W_dec,i(this model), W_dec,i(base model)) over those latents", better="none", unit="1 − cosine"
    )
    sae_drift_encoder: float | None = metric(
        "mean ‖W_enc,i(this model) − W_enc,i(base model)‖ / ‖W_enc,i(base model)‖ over those latents",
        better="none",
        unit="ratio",
    )
    sae_ft_explained_variance: float | None = metric(
        "explained variance of the fine-tuned SAE on this model's held-out corpus tokens",
        better="higher",
        unit="fraction",
        headline=True,
    )
    sae_ft_dead_frac: float | None = metric(
        "share of the fine-tuned SAE's latents never active on this model's held-out corpus tokens",
        better="lower",
        unit="fraction",
    )


def _ft_spec(facts: JobFacts) -> dict[str, Any]:
    cfg = facts.suite.sae_base
    return {
        "finetune": cfg.finetune_config().model_dump(mode="json"),
        "finetune_rows": cfg.finetune_rows,
        "seed": cfg.seed,
    }


@register_stage
class FinetuneBaseStage(Stage):
    name, version, order, needs = "ft_base", "1", 12, ("corpus_acts", "base_sae")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {"base_sae": up["base_sae"], "corpus_acts": up["corpus_acts"], **_ft_spec(facts)}

    def complete(self, folder: Path) -> bool:
        return (folder / "sae" / "cfg.json").is_file()

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        store = ActivationStore(ctx.path("corpus_acts"))
        x = store.rows(pick_rows(store, "train", cfg.finetune_rows, seed=cfg.seed))
        finetune_sae(
            ctx.path("base_sae") / "sae", cfg.finetune_config(), x, work / "sae", seed=cfg.seed, device=ctx.device
        )
        write_json(work / "metrics.json", [])


@register_stage
class FinetuneStage(Stage):
    name, version, order, needs = "sae_ft", "1", 13, ("corpus_acts", "base_sae", "model_rows", "ft_base")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        return {
            "reference": up["ft_base"],
            "rows": up["model_rows"],
            "drift_threshold": cfg.drift_threshold,
            **_ft_spec(facts),
        }

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        store = ActivationStore(ctx.path("corpus_acts"))
        replayed = ReplayedRows(ctx.path("model_rows"))
        train = np.flatnonzero(replayed.rows < store.n_train)
        held = np.flatnonzero((replayed.rows >= store.n_train) & (replayed.rows < store.n_train + store.n_heldout))
        finetune_sae(
            ctx.path("base_sae") / "sae",
            cfg.finetune_config(),
            replayed.acts(train),
            work / "sae",
            seed=cfg.seed,
            device=ctx.device,
        )
        ft, ref = load_sae(work / "sae"), load_sae(ctx.path("ft_base") / "sae")
        alive = torch.from_numpy(np.load(ctx.path("base_sae") / "density.npy") > 0)
        x = replayed.acts(held)
        x_hat, density, _ = encode_heldout(ft, x, 1)
        cos, drift = drift_metrics(ref, ft, alive, cfg.drift_threshold)
        np.save(work / "decoder_cosine.npy", cos.numpy())
        head = DriftMetrics(
            **drift,
            sae_ft_explained_variance=M.sae_explained_variance(x, x_hat),
            sae_ft_dead_frac=M.sae_dead_frac(density.float()),
        )
        write_json(work / "metrics.json", head.records(layer=ctx.facts.layer, sae=cfg.sae.architecture))
