"""The report's figures, in order: ``figures/<name>.png`` with its heading, caption and drawing function.

The paper's Figs. 3–7 come first (``bench.paper.figures``), then the alignment bars (Table 2 as bars)
and the SAE latent shares (``bench.figures``). ``draw`` takes the report's ``Results`` (anything with
``tidy``, ``board`` and ``curves`` tables) and raises ``bench.figures.MissingData`` when its data is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from bench.figures import align_score_bars, sae_fractions
from bench.paper import figures as P


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: its file name, heading, caption and how it is drawn from ``Results``."""

    name: str
    title: str
    caption: str
    draw: Callable[[Any], Figure]


FIGURES = (
    FigureSpec(
        "fig3_proxy_change",
        "Fig. 3: neuron proxies after DPO, relative change per layer",
        "(DPO − base) / |base| per layer, paired by seed. The paper's score is median(‖w_in‖·b_in) over the "
        "100 neurons whose input weights changed most; it exists only for MLPs with an input bias (GPT-2 "
        "family: `weight_proxy`, here over all neurons of the layer). SmolLM2 and Llama have no such bias, "
        "so `act_variance` (variance of a last-token activation across hidden units) is plotted as the "
        "activation-based analogue. Cf. Yan et al. 2024, Fig. 3.",
        lambda r: P.proxy_change_by_depth(r.tidy, r.board),
    ),
    FigureSpec(
        "fig4_decorrelation_by_depth",
        "Fig. 4: decorrelation by depth, both read-outs",
        "Decorrelation (1 − mean pairwise cosine of MLP input-projection activations over held-out texts) "
        "per layer against relative depth, for base / DPO / DecPO (both forms). Top row: the paper's "
        "read-out, the last token of the prompt alone (`decorrelation_prompt`); bottom row: ours, the EOS "
        "after prompt + chosen reply (`decorrelation`), the token DecPO regularises. Higher = less "
        "correlated. Dashed: the regularised layer. Cf. Yan et al. 2024, Fig. 4.",
        lambda r: P.decorrelation_by_depth(r.tidy, r.board),
    ),
    FigureSpec(
        "fig5_decorrelation_over_training",
        "Fig. 5: decorrelation over training",
        "Decorrelation at the regularised layer over optimiser steps (EOS after held-out prompt + chosen "
        "reply, `proxy/decorrelation` of the train stage's curves.csv), DPO vs DecPO (both forms). "
        "Cf. Yan et al. 2024, Fig. 5.",
        lambda r: P.decorrelation_over_training(r.curves),
    ),
    FigureSpec(
        "fig6_act_variance_diff",
        "Fig. 6: activation variance, DecPO − DPO",
        "act_variance (variance of a last-token activation across hidden units, averaged over prompts) of "
        "DecPO (both forms) and L1-Reg minus DPO at the same seed, per layer. Above zero: the regularised "
        "model's activations are more spread out (the paper's \"sparser\"). Cf. Yan et al. 2024, Fig. 6.",
        lambda r: P.act_variance_diff(r.tidy, r.board),
    ),
    FigureSpec(
        "fig7_reward_margin_over_training",
        "Fig. 7: reward margin over training",
        "β · [(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] (summed over reply tokens) on fixed "
        "training and held-out pairs over optimiser steps, DPO vs DecPO (both forms). Cf. Yan et al. 2024, Fig. 7.",
        lambda r: P.reward_margin_over_training(r.curves),
    ),
    FigureSpec(
        "align_score",
        "Alignment score",
        "align_score per task and method (Table 2 as bars); dots are single seeds.",
        lambda r: align_score_bars(r.board),
    ),
    FigureSpec(
        "sae_fractions",
        "SAE latents: interpretable vs decorrelated",
        "Among alive latents of the SAE trained on each model's hook-layer activations: the share with "
        "a MonoSemanticity Score above its permutation null (interpretable), the share whose largest "
        "|correlation| with another latent is below 0.3 (decorrelated), and the share that is both.",
        lambda r: sae_fractions(r.board),
    ),
)
