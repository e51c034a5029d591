"""Many SAEs per model from one collection pass ([sae] layers / variants, ``saes.grid``): the settings, and a
tiny suite end to end — one forward for every layer, one lockstep pass for every SAE, the primary SAE's
leaderboard numbers unchanged by the extra SAEs."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from tiny_suites import tiny_sycophancy_suite

from bench.cli import main
from saes.config import SAEConfig
from saes.grid import SAEGridConfig
from saes.show import _moved_store, show_feature

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = tiny_sycophancy_suite("sae grid test")
GRID = "layers = [2]\n[sae.variants.k4]\nk = 4\n"


def test_grid_settings_labels_and_unchanged_keys():
    plain = {"k": 8, "expansion": 2}
    grid = SAEGridConfig(**plain, layers=(0, 2), variants={"k4": {"k": 4}, "wide": {"expansion": 4}})
    assert list(grid.configs()) == ["topk", "k4", "wide"]
    assert grid.variant("k4") == SAEConfig(k=4, expansion=2) and grid.primary() == SAEConfig(**plain)
    assert grid.all_layers(1) == [1, 0, 2] and grid.all_layers(2) == [2, 0]  # a job's hook layer comes first, once
    # a variant's table changes only the keys it names
    ev = SAEGridConfig(eval={"ms_null_draws": 19}, variants={"x": {"eval": {"ms_top_n": 8}}}).variant("x").eval
    assert (ev.ms_null_draws, ev.ms_top_n) == (19, 8)
    # a suite without a grid keeps its stage keys (and stored results): the key is SAEConfig's dump
    assert SAEGridConfig(**plain).key_dump() == SAEConfig(**plain).model_dump(mode="json")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variants": {"short": {"context_length": 32}}}, "decide the shared activation store"),
        ({"variants": {"topk": {"k": 4}}}, "other than the primary"),
        ({"variants": {"bad": {"k": 0}}}, "sae.variants.bad: .*k = 0 must be ≥ 1"),
        ({"variants": {"typo": {"kk": 3}}}, "sae.variants.typo"),
        ({"layers": (2, 2)}, "distinct layer indices"),
    ],
)
def test_grid_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAEGridConfig(**kwargs)


def test_a_render_without_grid_removes_a_stale_sae_grid_csv(tmp_path):
    from bench.leaderboard import write_leaderboard

    (tmp_path / "sae_grid.csv").write_text("model,task\n")
    (tmp_path / "leaderboard_seeds.csv").write_text("model,task\n")
    write_leaderboard(tmp_path)
    assert not (tmp_path / "sae_grid.csv").exists() and not (tmp_path / "leaderboard_seeds.csv").exists()


def _run(suite: Path, out: Path) -> pd.DataFrame:
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    return pd.read_csv(out / "leaderboard.csv")


def test_grid_suite_collects_once_trains_in_one_pass_and_keeps_the_primary(tmp_path):
    suite, out = tmp_path / "s.toml", tmp_path / "run"
    suite.write_text(SUITE)
    plain = _run(suite, out)
    assert not (out / "sae_grid.csv").exists()
    suite.write_text(SUITE.replace("[sae.eval]", GRID + "[sae.eval]"))
    board = _run(suite, out)
    sae_cols = [c for c in plain.columns if c.startswith("sae_")]
    assert sae_cols and board[sae_cols].equals(plain[sae_cols])  # the primary SAE is the same SAE, same scores

    job = json.loads(next((out / "jobs").glob("*__sycophancy__base__s0.json")).read_text())
    acts = out / "runs" / job["stages"]["acts"]
    assert json.loads((acts / "layer2" / "manifest.json").read_text())["request"]["layer"] == 2
    assert (acts / "layer2" / "doc_tokens.npy").read_bytes() == (acts / "doc_tokens.npy").read_bytes()
    sae = out / "runs" / job["stages"]["sae"]
    for sub in ("grid/L1-k4", "grid/L2-topk", "grid/L2-k4"):
        rec = json.loads((sae / sub / "sae" / "training.json").read_text())
        assert rec["n_saes_in_pass"] == 4  # one lockstep pass for the 2 layers × 2 configs
    grid = pd.read_csv(out / "sae_grid.csv")
    assert sorted(zip(grid["layer"], grid["sae"])) == [(1, "k4"), (1, "topk"), (2, "k4"), (2, "topk")]
    primary = grid[(grid["layer"] == 1) & (grid["sae"] == "topk")]
    assert primary["sae_explained_variance"].item() == pytest.approx(board["sae_explained_variance"].item())
    assert grid.loc[grid["sae"] == "k4", "sae_l0"].max() <= 4 + 1e-6
    moved = tmp_path / "moved"
    out.rename(moved)  # show-feature finds each SAE's store (the layer-2 one for a layer-2 SAE) after a move
    run = moved / "runs" / job["stages"]["sae"] / "grid" / "L2-k4"
    assert _moved_store(run, acts / "layer2") == moved / "runs" / acts.name / "layer2"
    assert show_feature(run, 0, n=2).strip()


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ("layers = [7]\n", r"sae.layers = \[7\]: \[7\] out of range; the model has 3 layers"),
        ("[sae.variants.big]\nk = 1000\n", r"\[sae.variants.big\] does not fit .*k = 1000"),
    ],
)
def test_dry_run_refuses_grid_that_does_not_fit_the_model(tmp_path, capsys, grid, match):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.replace("[sae.eval]", grid + "[sae.eval]"))
    assert main(["run", "suite", str(suite), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
