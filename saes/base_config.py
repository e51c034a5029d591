"""The ``[sae_base]`` table: one base SAE per base model, read on and fine-tuned to every aligned model.

    [sae_base]                  # omit the table to skip these stages
    transfer_tokens = 10_240    # held-out corpus tokens every model is read on
    [sae_base.sae]              # architecture, width, budget of the base SAE (a [sae]-style table)
    k = 64
    [sae_base.corpus]           # the generic text mix (saes.corpus)
    texts_per_file = 200

The base SAE is trained once per (base model, hook, layer, SAE config, corpus, seed) — not per task or
method — so every aligned model of a suite is compared against the same latents (Kissane et al. 2024:
base SAEs transfer to chat models; Minder et al. 2025 for what changes).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from bench.core.settings import Settings
from saes.config import SAEConfig
from saes.corpus import CorpusConfig


class BaseSAEConfig(Settings):
    """Base SAE, transfer and fine-tune settings (issue 18)."""

    sae: SAEConfig = SAEConfig(
        expansion=2, k=64, training_tokens=262_144, batch_size=1024, dead_feature_window=25, context_length=128
    )
    """The base SAE: architecture, width, k, token budget, lr, and how the corpus store is collected
    (context_length, collect_batch_size, heldout_frac, store_dtype); ``max_texts`` is not used (the corpus
    decides the texts)."""
    corpus: CorpusConfig = CorpusConfig()
    """The generic text mix the base SAE is trained and every model is read on."""
    seed: int = Field(0, ge=0)
    """Seed of the corpus store's split and of the base SAE (the same for every job seed: one base SAE)."""
    transfer_tokens: int = Field(10_240, ge=64)
    """Held-out corpus tokens (whole documents, seeded) each model is read on for transfer and drift scores."""
    finetune_rows: int = Field(8192, ge=64)
    """Train-split corpus tokens (whole documents, seeded) of each model a fine-tune sees."""
    finetune_tokens: int = Field(16_384, ge=64)
    """Training tokens of each fine-tune (epochs over ``finetune_rows``); 0 steps would drift nothing."""
    finetune_lr: float | None = Field(None, gt=0)
    """Fine-tune learning rate; None = the base SAE's lr."""
    finetune_dead_feature_window: int | None = Field(None, ge=1)
    """Steps without firing after which a latent counts as dead in the fine-tune (SAELens's ``dead_feature_window``:
    it switches on the TopK AuxK loss for those latents); None = the base SAE's. Set it below the fine-tune's
    steps (``finetune_tokens / batch_size``), or the auxiliary loss never engages."""
    freq_q: float = Field(0.05, gt=0, lt=1)
    """Benjamini–Hochberg false-discovery rate of the per-latent frequency-change tests."""
    freq_draws: int = Field(999, ge=19)
    """Sign-flip draws of the frequency-change test (p ≥ 1/(draws + 1))."""
    drift_threshold: float = Field(0.9, gt=-1, lt=1)
    """A latent drifted when cos(decoder on the model, decoder on the base model) is below this."""
    concept_k: int = Field(5, ge=1)
    """Concept latents of a task: the k base-SAE latents whose mean activation over the task's concept texts
    differs most between labels (SAEBench's k-sparse probe selection)."""
    concept_max_texts: int = Field(64, ge=4)
    """Concept texts (the first, in the task's order) read for that selection."""
    top_changed: int = Field(50, ge=1)
    """Size of each model's set of most-changed latents (their Jaccard overlap across methods, the report)."""
    ce_docs: int = Field(16, ge=0)
    """Held-out corpus documents of the CE score of the spliced base SAE (three full forwards each); 0 = none."""

    @model_validator(mode="after")
    def _finetune_fits(self) -> BaseSAEConfig:
        if self.sae.batch_size > self.finetune_tokens:
            raise ValueError(
                f"sae_base.finetune_tokens = {self.finetune_tokens} is less than one batch "
                f"(sae_base.sae.batch_size = {self.sae.batch_size}); raise it or lower the batch"
            )
        if self.sae.batch_size > self.finetune_rows:
            raise ValueError(
                f"sae_base.finetune_rows = {self.finetune_rows} is less than one batch "
                f"(sae_base.sae.batch_size = {self.sae.batch_size})"
            )
        return self

    def finetune_config(self) -> SAEConfig:
        """The base SAE's config with the fine-tune's token budget, lr and dead-feature window (what
        ``saes.finetune`` trains with)."""
        window = self.finetune_dead_feature_window or self.sae.dead_feature_window
        return self.sae.model_copy(
            update={
                "training_tokens": self.finetune_tokens,
                "lr": self.finetune_lr or self.sae.lr,
                "dead_feature_window": window,
            }
        )
