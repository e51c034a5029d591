"""The ``[browse]`` table: how much of each SAE the feature browser (``python -m bench browse``) exports."""

from __future__ import annotations

from pydantic import Field

from bench.core.settings import Settings


class BrowseConfig(Settings):
    """Size caps of the static feature browser (every latent is in its SAE's table; these many get a page)."""

    max_latents: int = Field(48, ge=1)
    """Latents per SAE with a page of contexts: the most interpretable (fresh SAEs) or most changed (base SAE),
    the task's concept latents, and a seeded random sample of the alive ones."""
    top_contexts: int = Field(10, ge=1)
    """Top-activating held-out contexts per latent (one per document)."""
    random_contexts: int = Field(4, ge=0)
    """Randomly drawn activating held-out contexts per latent."""
    context_before: int = Field(16, ge=1)
    """Tokens shown up to and including the activating one."""
    context_after: int = Field(4, ge=0)
    """Tokens shown after it."""
    histogram_bins: int = Field(20, ge=2)
    """Bins of the histogram of a latent's non-zero activations."""
    decoder_tokens: int = Field(8, ge=1)
    """Top output tokens of a latent's decoder direction read through the down projection and the unembedding."""
    seed: int = Field(0, ge=0)
    """Seed of the random latents and contexts."""
