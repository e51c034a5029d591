"""``model_rows``, ``concept_latents`` and ``sae_transfer``: the base SAE read on the job's model, no retraining.

- ``model_rows``: the job's model at the same corpus tokens as the base store (``saes.replay``): held-out
  rows for transfer scores, train rows for the fine-tune (the base model's rows are copied from its store).
- ``concept_latents``: the task's concept latents — the ``concept_k`` base-SAE latents whose mean activation
  over the task's concept texts (base model) differs most between labels; one per (task, seed) data split.
- ``sae_transfer``: explained variance and CE score of the base SAE on the job's model, the frequency change
  of every latent (``saes.diffing``) and whether the concept latents changed more than the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.io import read_json, write_json
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.stages import JobFacts, Stage, StageContext, register_stage
from saes import metrics as M
from saes.ce import ce_losses
from saes.diffing import concept_rank, doc_rates, share_changed, sign_flip_test, top_changed
from saes.probe import pooled_latents
from saes.replay import ReplayedRows, copy_rows, pick_rows, replay_rows
from saes.score import load_sae
from saes.store import ActivationStore


@register_metrics
class TransferMetrics(MetricSet):
    """The shared base SAE on the job's model, over the same held-out corpus tokens as on the base model."""

    group, where = "sae_transfer", "bench.stages.transfer.TransferStage / saes.diffing"
    sae_transfer_explained_variance: float | None = metric(
        "explained variance of the base SAE on this model's activations at the held-out corpus tokens",
        better="higher",
        unit="fraction",
        headline=True,
    )
    sae_transfer_ev_drop: float | None = metric(
        "explained variance of the base SAE on the base model minus on this model, same tokens (0 for the base)",
        better="lower",
        unit="fraction",
    )
    sae_transfer_ce_score: float | None = metric(
        "CE score of the base SAE spliced into this model (held-out corpus documents; empty when zero-ablation "
        "moves the loss by < sae.eval.ce_min_gap nats)",
        better="higher",
        unit="fraction",
    )
    sae_transfer_freq_changed: float | None = metric(
        "share of alive base-SAE latents whose per-document firing rate differs between this model and the base "
        "model (paired sign-flip test over documents, Benjamini–Hochberg q ≤ sae_base.freq_q)",
        better="none",
        unit="fraction",
        headline=True,
    )
    sae_transfer_concept_rank: float | None = metric(
        "mean percentile rank of the task's concept latents' frequency change among alive latents of similar "
        "firing rate (20 equal-count rate groups; 0.5 = like latents that fire as often, 1 = changed most)",
        better="none",
        unit="fraction (chance 0.5)",
    )
    sae_transfer_n_tokens: float | None = metric(
        "held-out corpus tokens the transfer scores are computed on", better="none", unit="count"
    )


@register_stage
class ModelRowsStage(Stage):
    name, version, order, needs = "model_rows", "1", 9, ("train", "corpus_acts")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        return {
            "policy": facts.policy_id(up),
            "corpus_acts": up["corpus_acts"],
            "transfer_tokens": cfg.transfer_tokens,
            "finetune_rows": cfg.finetune_rows,
            "seed": cfg.seed,
        }

    def complete(self, folder: Path) -> bool:
        return (folder / "acts.npy").is_file()

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        store = ActivationStore(ctx.path("corpus_acts"))
        rows = np.concatenate(
            [
                pick_rows(store, "train", cfg.finetune_rows, seed=cfg.seed),
                pick_rows(store, "heldout", cfg.transfer_tokens, seed=cfg.seed),
            ]
        )
        if ctx.facts.method.policy == "base":
            copy_rows(store, rows, work)
        else:
            replay_rows(ctx.policy()[0], store, rows, work, batch_size=cfg.sae.collect_batch_size)
        write_json(work / "metrics.json", [])


@register_stage
class ConceptLatentsStage(Stage):
    name, version, order, needs = "concept_latents", "1", 10, ("data", "base_sae")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        return {"data": up["data"], "base_sae": up["base_sae"], "k": cfg.concept_k, "max_texts": cfg.concept_max_texts}

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        data = ctx.data()
        texts, labels = (
            data.concept_texts[: cfg.concept_max_texts],
            np.asarray(data.concept_labels[: cfg.concept_max_texts]),
        )
        chosen: list[int] = []
        if len(set(labels.tolist())) == 2:
            model, tok = ctx.base()
            sae = load_sae(ctx.path("base_sae") / "sae", next(model.parameters()).device)
            pooled = pooled_latents(
                model,
                tok,
                sae,
                texts,
                layer=ctx.facts.layer,
                hook=ctx.suite.hook.module,
                max_length=cfg.sae.context_length,
                batch_size=cfg.sae.collect_batch_size,
                use_chat_template=cfg.sae.use_chat_template,
                special_ids=tok.all_special_ids,
            ).numpy()
            diff = np.abs(pooled[labels == 1].mean(0) - pooled[labels == 0].mean(0))
            chosen = [int(i) for i in np.argsort(-diff, kind="stable")[: cfg.concept_k]]
        write_json(work / "concept_latents.json", {"latents": chosen, "n_texts": len(texts)})
        write_json(work / "metrics.json", [])


def encode_by_doc(sae, x: torch.Tensor, doc: np.ndarray, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, per-document firing rate (D × d_sae)) of ``sae`` on rows ``x`` whose documents are ``doc``."""
    x_hat = torch.empty_like(x)
    active = torch.zeros(x.shape[0], sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            z = sae.encode(x[s : s + chunk].to(sae.W_dec.device))
            z = z.to_dense() if z.is_sparse else z
            x_hat[s : s + chunk] = sae.decode(z).float().cpu()
            active[s : s + chunk] = (z != 0).cpu()
    return x_hat, doc_rates(active, doc)[0]


@register_stage
class TransferStage(Stage):
    name, version, order, needs = "sae_transfer", "3", 11, ("corpus_acts", "base_sae", "model_rows", "concept_latents")

    def applies(self, facts: JobFacts) -> bool:
        return facts.suite.sae_base is not None

    def reads(self, facts: JobFacts) -> tuple[str, ...]:
        return (*self.needs, "train") if facts.suite.sae_base.ce_docs else self.needs  # the policy, for CE

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        cfg = facts.suite.sae_base
        return {
            "base_sae": up["base_sae"],
            "rows": up["model_rows"],
            "concepts": up["concept_latents"],
            "test": {"q": cfg.freq_q, "draws": cfg.freq_draws, "top": cfg.top_changed, "seed": cfg.seed},
            "ce_docs": cfg.ce_docs,
        }

    def run(self, ctx: StageContext, work: Path) -> None:
        cfg = ctx.suite.sae_base
        store = ActivationStore(ctx.path("corpus_acts"))
        replayed = ReplayedRows(ctx.path("model_rows"))
        held = np.flatnonzero((replayed.rows >= store.n_train) & (replayed.rows < store.n_train + store.n_heldout))
        doc = np.asarray(store.doc_index[replayed.rows[held]])
        sae = load_sae(ctx.path("base_sae") / "sae")
        x_base, x_model = store.rows(replayed.rows[held]), replayed.acts(held)
        xh_base, r_base = encode_by_doc(sae, x_base, doc)
        xh_model, r_model = encode_by_doc(sae, x_model, doc)
        t, p = sign_flip_test(r_model - r_base, draws=cfg.freq_draws, seed=cfg.seed)
        alive = (r_base.sum(0) > 0) | (r_model.sum(0) > 0)
        concepts = np.asarray(read_json(ctx.path("concept_latents") / "concept_latents.json")["latents"], dtype=int)
        ev_model = M.sae_explained_variance(x_model, xh_model)
        top = top_changed(t, alive, cfg.top_changed)
        write_json(
            work / "top_changed.json",
            {
                "n_alive": int(alive.sum()),
                "latents": [
                    {
                        "latent": i,
                        "t": float(t[i]),
                        "p": float(p[i]),
                        "base_rate": float(r_base[:, i].mean()),
                        "model_rate": float(r_model[:, i].mean()),
                    }
                    for i in top
                ],
            },
        )
        np.save(work / "freq_t.npy", t.numpy())
        np.save(work / "freq_p.npy", p.numpy())
        head = TransferMetrics(
            sae_transfer_explained_variance=ev_model,
            sae_transfer_ev_drop=M.sae_explained_variance(x_base, xh_base) - ev_model,
            sae_transfer_ce_score=self._ce(ctx, store, sae) if cfg.ce_docs else None,
            sae_transfer_freq_changed=share_changed((t, p), alive, cfg.freq_q),
            sae_transfer_concept_rank=concept_rank(t, concepts, alive, (r_base + r_model).mean(0) / 2)
            if len(concepts)
            else None,
            sae_transfer_n_tokens=len(held),
        )
        write_json(work / "metrics.json", head.records(layer=ctx.facts.layer, sae=cfg.sae.architecture))

    @staticmethod
    def _ce(ctx: StageContext, store: ActivationStore, sae) -> float:
        cfg = ctx.suite.sae_base
        model = ctx.policy()[0]
        clean, spliced, zero, _ = ce_losses(
            model,
            store,
            sae.to(next(model.parameters()).device),
            layer=ctx.facts.layer,
            hook=ctx.suite.hook.module,
            max_docs=cfg.ce_docs,
        )
        return M.sae_ce_score(clean, spliced, zero, min_gap=cfg.sae.eval.ce_min_gap)
