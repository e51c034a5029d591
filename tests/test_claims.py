"""The claims checklist: hand-computed rows, calibration on null data, planted effects, missing methods."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.paper.claims import ALPHA, claims_table, early_minus_late
from bench.paper.tables import PAPER_TABLE2, table1_rows, table2_section

METHODS = ("base", "dpo", "decpo", "decpo_paper")
TASKS = ("toxicity", "reframing", "sycophancy")
COLS = ("decorrelation_prompt_mean", "decorrelation", "act_variance", "align_score", "reward_margin")
N_LAYERS = 9


def synthetic(rng, seeds=range(4), effect=None, methods=METHODS):
    """board + tidy: every quantity noise around the same value; ``effect`` adds (method, column) → shift."""
    effect = effect or {}
    board, tidy = [], []
    for task in TASKS:
        for seed in seeds:
            unit = rng.normal(0, 1, len(COLS))  # shared by the methods of a (task, seed): the pairing
            for m in methods:
                row = {"model": "m", "task": task, "method": m, "seed": seed}
                for j, c in enumerate(COLS):
                    row[c] = 1.0 + unit[j] + rng.normal(0, 0.3) + effect.get((m, c), 0.0)
                board.append(row)
                for layer in range(N_LAYERS):
                    shift = effect.get((m, "early"), 0.0) if layer <= N_LAYERS // 3 else 0.0
                    v = 0.5 + rng.normal(0, 0.05) + shift
                    tidy.append(row | {"layer": layer, "sae": np.nan, "metric": "decorrelation_prompt", "value": v})
    cols = ["model", "task", "method", "seed", "layer", "sae", "metric", "value"]
    return pd.DataFrame(board), pd.DataFrame(tidy)[cols]


def test_a_row_is_the_hand_computed_paired_test():
    rng = np.random.default_rng(0)
    board, tidy = synthetic(rng, effect={("decpo", "act_variance"): 1.0})
    c = claims_table(board, tidy)
    row = c[(c["claim"] == "C3") & (c["treatment"] == "decpo")].iloc[0]
    w = board.pivot_table(index=["task", "seed"], columns="method", values="act_variance")
    d = (w["decpo"] - w["dpo"]).to_numpy()
    assert row["n_units"] == len(d) == 12 and row["diff"] == pytest.approx(d.mean())
    assert row["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    half = stats.t.ppf(1 - row["level"] / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert row["ci_lo"] == pytest.approx(d.mean() - half) and row["verdict"] == "supported"
    assert row["level"] == pytest.approx(ALPHA / c["p"].notna().sum())  # the smallest p: the first Holm step


def test_null_data_is_inconclusive_at_the_nominal_rate():
    """Negative control: no true difference anywhere, 100 checklists of 16 rows; checklists with any row
    judged supported or contradicted (a false positive) stay within Holm's nominal 5 % family-wise rate
    (binomial margin: ≤ 10 of 100; unadjusted tests would flag about half of them)."""
    rng = np.random.default_rng(1)
    wrong = total = families_wrong = 0
    for _ in range(100):
        c = claims_table(*synthetic(rng))
        live = c[c["verdict"].isin(["supported", "contradicted", "inconclusive"])]
        n_wrong = int(live["verdict"].isin(["supported", "contradicted"]).sum())
        wrong, total, families_wrong = wrong + n_wrong, total + len(live), families_wrong + (n_wrong > 0)
    assert total == 100 * 16
    assert families_wrong <= 10, families_wrong  # P(≥ 11 of 100 | 5 %) ≈ 1 %
    assert wrong / total <= ALPHA


def test_planted_effects_are_found_with_their_sign():
    rng = np.random.default_rng(2)
    effect = {("decpo", "decorrelation"): 2.0, ("decpo", "reward_margin"): -2.0, ("dpo", "early"): 0.3}
    c = claims_table(*synthetic(rng, seeds=range(6), effect=effect))
    c = c.set_index(["claim", "treatment", "metric"]).sort_index()
    assert c.loc[("C2", "decpo", "`decorrelation` (regularised layer, DecPO's token)"), "verdict"] == "supported"
    assert c.loc[("C5", "decpo", "`reward_margin` (held-out, end of training)"), "verdict"] == "contradicted"
    assert c.loc[("C5", "decpo"), "claim_verdict"].iloc[0] == "contradicted"
    assert c.loc[("C1", "dpo", "early − late layers of `decorrelation_prompt`"), "verdict"] == "supported"


def test_missing_methods_and_untested_claims_say_so():
    rng = np.random.default_rng(3)
    c = claims_table(*synthetic(rng, methods=("base", "dpo", "decpo")))
    paper = c[c["treatment"] == "decpo_paper"]
    assert len(paper) == 7 and set(paper["verdict"]) == {"cannot test"}
    assert paper["why"].str.contains("no decpo_paper run").all()
    assert c.loc[c["claim"] == "C6", "verdict"].item() == "cannot test"  # no top_tokens_task_share rows
    one = claims_table(*synthetic(rng, seeds=[0]))  # one seed: a single task has one paired unit
    assert set(one.loc[one["claim"] == "C4", "verdict"]) == {"cannot test"}


def test_two_models_pair_each_models_runs_with_its_own():
    """Units are (model, task, seed): once they were (task, seed), and a folder of two models paired every
    model's treatment with every model's control (n doubled, cross-model pairs)."""
    rng = np.random.default_rng(4)
    one = synthetic(rng, seeds=range(3))
    two = [pd.concat([f, f.assign(model="m2")], ignore_index=True) for f in one]
    c1, c2 = claims_table(*one), claims_table(*two)
    for claim, task in (("C3", "all"), ("C4", "toxicity")):
        pick = (c2["claim"] == claim) & (c2["treatment"] == "decpo") & (c2["task"] == task)
        n1 = c1.loc[(c1["claim"] == claim) & (c1["treatment"] == "decpo") & (c1["task"] == task), "n_units"].item()
        assert c2.loc[pick, "n_units"].item() == 2 * n1 == (18 if task == "all" else 6)


def test_equal_differences_and_tied_p_values():
    """All-equal non-zero differences have no spread: "cannot test", not "supported" with p = 0; tied p-values
    share one Holm level whatever their order."""
    from bench.paper.claims import _holm_levels

    board, tidy = synthetic(np.random.default_rng(5), seeds=range(2))
    board.loc[board["method"] == "dpo", "align_score"] = 0.7
    board.loc[board["method"] == "decpo", "align_score"] = 0.8
    c = claims_table(board, tidy)
    rows = c[(c["claim"] == "C4") & (c["treatment"] == "decpo")]
    assert set(rows["verdict"]) == {"cannot test"} and rows["why"].str.contains("no spread").all()
    assert _holm_levels([0.01, 0.01, 0.02]) == [ALPHA / 3, ALPHA / 3, ALPHA / 1]
    assert _holm_levels([0.02, 0.01, 0.01]) == [ALPHA / 1, ALPHA / 3, ALPHA / 3]


def test_early_minus_late_by_hand():
    tidy = pd.DataFrame(
        {
            "model": "m",
            "task": "t",
            "method": "dpo",
            "seed": 0,
            "layer": [0, 1, 2, 3, 4, 5, 6],  # rel. depth 0, 1/6, …, 1: early = layers 0–2, late = 4–6
            "sae": np.nan,
            "metric": "decorrelation_prompt",
            "value": [3.0, 2.0, 1.0, 9.0, 1.0, 0.0, 2.0],
        }
    )
    q = early_minus_late("decorrelation_prompt")(pd.DataFrame(), tidy, "dpo")
    assert q["value"].item() == pytest.approx(2.0 - 1.0)


def test_table2_sits_beside_the_papers_values():
    board = pd.DataFrame(
        [{"model": "m", "task": t, "method": m, "seed": 0, "align_score": 0.25} for t in ("toxicity",) for m in METHODS]
    )
    table = table2_section(board, None)[-1]
    dpo = next(r for r in table.rows if r[0] == "DPO")
    assert dpo == ["DPO", "DPO", "25.0", str(PAPER_TABLE2["DPO"]["toxicity"])]
    paper = next(r for r in table.rows if r[0] == "DecPO (paper code)")
    assert paper[1] == "DecPO" and paper[3] == "56.0"


def test_table1_keeps_the_top_neurons_of_each_layer():
    recs = [{"layer": L, "neuron": k, "change": 1.0 / (k + 1), "tokens": ["a"]} for L in (2, 9) for k in range(5)]
    rows = table1_rows(recs, n=2)
    assert [(r[0], r[2]) for r in rows] == [("2", "0"), ("2", "1"), ("9", "0"), ("9", "1")]


def test_c6_is_the_depth_contrast_of_the_task_share_of_top_tokens():
    rng = np.random.default_rng(4)
    board, tidy = synthetic(rng, seeds=range(6))
    rows = [
        {
            "model": "m",
            "task": t,
            "method": "dpo",
            "seed": s,
            "layer": layer,
            "sae": np.nan,
            "metric": "top_tokens_task_share",
            "value": 0.1 + 0.2 * (layer == 9) + rng.normal(0, 0.01),
        }
        for t in ("toxicity", "reframing", "sycophancy")
        for s in range(6)
        for layer in (1, 5, 9)
    ]
    c = claims_table(board, pd.concat([tidy, pd.DataFrame(rows)], ignore_index=True))
    c6 = c[c["claim"] == "C6"].iloc[0]
    assert c6["verdict"] == "supported" and c6["diff"] == pytest.approx(-0.2, abs=0.01)


def test_task_specific_tokens_by_hand():
    from collections import Counter

    from bench.paper.specificity import log_odds, share, specific_strings

    lo = log_odds(Counter({1: 30, 2: 10}), Counter({1: 10, 2: 1000}), vocab=4)
    # token 1: (30.5 / 42) / (10.5 / 1012) ≈ 70 → specific; token 2: (10.5 / 42) / (1000.5 / 1012) ≈ 0.25 → not
    assert lo[1] == pytest.approx(np.log((30.5 / 42) / (10.5 / 1012)))
    assert specific_strings(lo, {1: " hate", 2: " the"}) == {" hate"}
    assert share([" hate", " the", " hate", "x"], {" hate"}) == 0.5
