"""`python -m bench sweep decpo` on the smoke suite: one task, λ ∈ {0, 0.1}, one layer."""

import pandas as pd
import pytest

from bench.cli import main
from bench.config import load_suite
from bench.sweep import COLUMNS, parse_layers


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rc = main(["sweep", "decpo", "--suite", "smoke", "--task", "toxicity", "--lambdas", "0.1", "--layers", "1",
               "--device", "cpu", "--out", str(root / "sweep"), "--results", str(root / "store")])
    assert rc == 0
    return root


def test_sweep_csv_has_columns_and_a_dpo_baseline(sweep_out, capsys):
    df = pd.read_csv(sweep_out / "sweep" / "sweep.csv")
    assert list(df.columns) == COLUMNS
    assert sorted(df["lambda"]) == [0.0, 0.1]  # λ = 0 is added even when not asked for
    assert set(df["task"]) == {"toxicity"} and set(df["layer"]) == {1}
    assert (df["steps"] == load_suite("smoke")[0].methods["decpo"].max_steps).all()
    base = df[df["lambda"] == 0].iloc[0]
    assert base["decorrelation_vs_dpo"] == 0 and base["pref_acc_vs_dpo"] == 0
    for col in ("start_decorrelation", "end_decorrelation", "start_decor_loss", "end_pref_acc", "end_reward_margin"):
        assert df[col].notna().all(), col
    # both runs start from the same base model, so their step-0 proxies agree
    assert df["start_decorrelation"].nunique() == 1
    curves = pd.read_csv(sweep_out / "sweep" / "curves.csv")
    assert {"task", "lambda", "layer", "step", "proxy/decorrelation"} <= set(curves.columns)
    assert not (sweep_out / "sweep" / "tmp").exists()


def test_sweep_reuses_the_suites_data_stage(sweep_out):
    assert len(list((sweep_out / "store" / "runs").glob("data-*"))) == 1


def test_sweep_rejects_unknown_task(tmp_path, capsys):
    assert main(["sweep", "decpo", "--suite", "smoke", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "not in suite smoke" in capsys.readouterr().err


def test_parse_layers():
    assert parse_layers("7, 15,0.5") == [7, 15, 0.5]
