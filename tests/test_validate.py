"""``bench validate --quick``: every metric's controls run and pass, and a failing control fails the command."""

import pandas as pd

from bench.cli import main
from bench.core import controls


def test_quick_validation_passes_for_every_metric(tmp_path, capsys):
    assert main(["validate", "--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "validation.csv")
    assert list(table.columns[:6]) == ["metric", "kind", "control", "expected", "observed", "pass"]
    assert table["pass"].all(), table[~table["pass"]]
    for metric in (
        "sae_frac_interpretable",
        "sae_frac_decorrelated",
        "sae_explained_variance",
        "sae_ce_score",
        "sae_probe_top1",
        "decorrelation",
        "pref_acc",
        "syco_rate",
        "tox_rate",
        "align_score",
        "positivity_gain",
        "relatedness",
        "no_opinion_acc",
        "mean_tox_prob",
        "sae_dead_frac",
        "sae_probe_top5",
        "acc_user_right",
        "acc_user_wrong",
        "syco_flip_rate",
        "contrarian_rate",
        "degenerate_rate",
        "sae_transfer_top_jaccard",
        "weight_proxy",
        "act_variance",
        "sae_drift_frac",
        "sae_drift_decoder",
        "sae_drift_encoder",
        "acts_heldout_leaks",
        "acts_heldout_twins",
    ):
        assert set(table.loc[table.metric == metric, "kind"]) == {"negative", "positive"}, metric
    for task in ("toxicity", "reframing", "sycophancy"):  # align_score is a different function per task
        rows = table[(table.metric == "align_score") & table.control.str.startswith(f"{task}:")]
        assert set(rows["kind"]) == {"negative", "positive"}, task
    dup = table[table.control.str.contains("duplicated tokens")]
    assert len(dup) == 4 and (dup.observed <= 0.08).all()
    assert "sae_frac_interpretable" in capsys.readouterr().out


def test_a_failing_control_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(controls, "CONTROLS", [])
    monkeypatch.setattr("bench.validate.CONTROLS", controls.CONTROLS)
    monkeypatch.setattr("bench.validate.load_controls", lambda: None)
    controls.control("made_up", "negative", "always 1", expect="= 0", check=lambda v: v == 0)(lambda ctx: 1.0)
    assert main(["validate", "--quick", "--out", str(tmp_path)]) == 1
    assert not pd.read_csv(tmp_path / "validation.csv")["pass"].any()
