"""Settings that can be checked without running fail at load time (so at `run` start and `--dry-run`),
naming the key, the value and what is allowed."""

import pytest

from bench.cli import main
from bench.config import SuiteConfig

BASE = {"name": "x", "model": {"id": "tiny:llama"}, "tasks": {"toxicity": {}}, "methods": {"base": {}}}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"seeds": []}, r"seeds = \[\] runs nothing"),
        ({"seeds": [-1]}, r"seeds \[-1\] are negative"),
        ({"seeds": [0, 1, 0]}, r"seeds \[0\] are listed twice"),
        ({"tasks": {"toxicity": {"batch_size": 0}}}, r"\[tasks.toxicity\] batch_size: Input should be greater"),
        ({"tasks": {"toxicity": {"n_train": True}}}, r"n_train = True is a boolean"),
        ({"methods": {"dpo": {"lr": float("inf")}}}, r"\[methods.dpo\] lr: Input should be a finite number"),
        ({"methods": {"dpo": {"lamda": 1}}}, r"lamda: Extra inputs.*allowed keys here: lr, max_steps"),
        ({"sae": {"eval": {"ms_nul_draws": 3}}}, r"eval.ms_nul_draws.*allowed keys here: dense_threshold"),
    ],
)
def test_bad_settings_fail_at_load_naming_key_and_value(change, match):
    with pytest.raises(ValueError, match=match):
        SuiteConfig.model_validate({**BASE, **change})


def test_dry_run_refuses_a_bad_suite_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = [0, 0]\n[model]\nid = "tiny:llama"\n[tasks.toxicity]\n[methods.base]\n')
    assert main(["run", "suite", str(bad), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "listed twice" in err[0]


def test_every_shipped_suite_runs_both_controls():
    """The A/A control (dpo_aa) and the random-initialised model (random_init) are in every suite, so every
    report can show what noise alone moves and what the SAE scores of a model that learned nothing are."""
    from bench.config import load_suite, shipped_suites

    for name, path in shipped_suites().items():
        suite, _ = load_suite(str(path))
        assert {"dpo_aa", "random_init"} <= set(suite.methods), name
