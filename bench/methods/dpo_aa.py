"""``dpo_aa``: the A/A control — DPO again, differing from ``dpo`` only in its training randomness.

Same data, same LoRA initialisation, same hyper-parameters; the data order and the dropout draws come
from the seed offset ``noise_seed = 1``. Paired by seed with ``dpo`` exactly like DecPO − DPO, its
differences show what training randomness alone moves each metric by; their 95 % intervals must cover
0 at the nominal rate (``bench validate`` checks it on the tiny model), and the report prints the A/A
row beside DecPO − DPO.
"""

from pydantic import Field

from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig, build


class DPOAAMethodConfig(DPOMethodConfig):
    """``dpo_aa``: ``dpo`` with another draw of training randomness (data order, dropout)."""

    noise_seed: int = Field(1, ge=1)
    """Offset of the data-order and dropout seed from the job seed (≥ 1: it must differ from ``dpo``'s 0)."""


register_method(Method("dpo_aa", DPOAAMethodConfig, label="DPO (A/A)", order=25, uses_reference=True, build=build,
                       control=True, summary="control: DPO again with other training randomness (A/A)"))


# ----- control (``python -m bench validate``, not --quick) ---------------------------------------------
AA_METRICS = ("align_score", "pref_acc", "reward_margin", "syco_shift", "decorrelation", "act_variance")


def aa_exclusion_rate(ctx, n_seeds: int = 24) -> float:
    """DPO vs DPO (A/A) on the tiny model, ``n_seeds`` seeds of the sycophancy task: the share of paired
    95 % intervals (disjoint triples of seeds × metrics) that exclude 0, when every true difference is 0."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from bench.config import SuiteConfig
    from bench.leaderboard import paired_differences
    from bench.runner import run_suite

    suite = SuiteConfig.model_validate({
        "name": "aa-control", "seeds": list(range(n_seeds)), "model": {"id": "tiny:llama"},
        "hook": {"layer": 1}, "proxies": {"n_texts": 8},
        "tasks": {"sycophancy": {"n_train": 8, "n_eval": 12, "n_eval_unseen": 4}},
        "methods": {m: {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "eval_every": 2, "curve_pairs": 2,
                        "curve_prompts": 4, "max_length": 160, "max_prompt_length": 128} for m in ("dpo", "dpo_aa")}})
    with tempfile.TemporaryDirectory() as tmp:
        run_suite(suite, Path(tmp), device="cpu", progress=False, echo=lambda *_: None)
        board = pd.read_csv(Path(tmp) / "leaderboard.csv")
    excl = []
    for k in range(n_seeds // 3):
        part = board[board["seed"].between(3 * k, 3 * k + 2)]
        d = paired_differences(part, list(AA_METRICS), treatment="dpo_aa", control="dpo")
        if d is not None:
            excl += d["ci_excludes_0"].tolist()
    return float(sum(excl) / max(1, len(excl)))


def _register_control() -> None:
    from bench.controls import control

    control("paired differences (A/A)", "negative", "DPO vs DPO (A/A), tiny model, 8 triples of seeds × 6 metrics",
            expect="share of 95 % CIs excluding 0 ≤ 0.125 (nominal 0.05)", check=lambda v: v <= 0.125,
            quick=False)(aa_exclusion_rate)


_register_control()
