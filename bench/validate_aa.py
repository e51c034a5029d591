"""The A/A control of the paired differences (``python -m bench validate``, not ``--quick``).

DPO against DPO (A/A, ``bench/methods/dpo_aa.py``) on the tiny model: every true difference is 0, so
the share of paired 95 % intervals that exclude 0 must be near the nominal 0.05.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from bench.config import SuiteConfig
from bench.core.controls import ControlContext, control
from bench.leaderboard import paired_differences
from bench.runner import run_suite

AA_METRICS = ("align_score", "pref_acc", "reward_margin", "syco_shift", "decorrelation", "act_variance")


def aa_exclusion_rate(ctx: ControlContext, n_seeds: int = 24) -> float:
    """DPO vs DPO (A/A) on the tiny model, ``n_seeds`` seeds of the sycophancy task: the share of paired
    95 % intervals (disjoint triples of seeds × metrics) that exclude 0, when every true difference is 0."""
    suite = SuiteConfig.model_validate(
        {
            "name": "aa-control",
            "seeds": list(range(n_seeds)),
            "model": {"id": "tiny:llama"},
            "hook": {"layer": 1},
            "proxies": {"n_texts": 8},
            "tasks": {"sycophancy": {"n_train": 8, "n_eval": 12, "n_eval_unseen": 4}},
            "methods": {
                m: {
                    "max_steps": 4,
                    "batch_size": 2,
                    "lr": 1e-3,
                    "eval_every": 2,
                    "curve_pairs": 2,
                    "curve_prompts": 4,
                    "max_length": 160,
                    "max_prompt_length": 128,
                }
                for m in ("dpo", "dpo_aa")
            },
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_suite(suite, Path(tmp), device="cpu", progress=False, echo=lambda *_: None)
        board = pd.read_csv(Path(tmp) / "leaderboard.csv")
    excl = []
    for k in range(n_seeds // 3):
        part = board[board["seed"].between(3 * k, 3 * k + 2)]
        d = paired_differences(part, list(AA_METRICS), treatment="dpo_aa", control="dpo")
        if d is not None:
            # an equal non-zero difference on every seed (no spread, so no interval) counts as excluding 0
            excl += (d["ci_excludes_0"] | d["no_spread"]).tolist()
    return float(sum(excl) / max(1, len(excl)))


def _register_control() -> None:

    control(
        "paired differences (A/A)",
        "negative",
        "DPO vs DPO (A/A), tiny model, 8 triples of seeds × 6 metrics",
        expect="share of 95 % CIs excluding 0 ≤ 0.125 (nominal 0.05)",
        check=lambda v: v <= 0.125,
        quick=False,
    )(aa_exclusion_rate)


_register_control()
