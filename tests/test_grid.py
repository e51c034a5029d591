"""A [grid] suite on the tiny model: variants are ordinary jobs (keys, resume, leaderboard rows), each read
at the layer it regularises."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_suites import tiny_sycophancy_suite

from bench.cli import main
from bench.config import expand_grid, load_suite

REPO = Path(__file__).resolve().parents[1]
TRAIN = (
    "max_steps = 2\nbatch_size = 2\nlr = 1e-3\neval_every = 2\ncurve_pairs = 2\ncurve_prompts = 4\n"
    "max_length = 160\nmax_prompt_length = 120\n"
)
SUITE = tiny_sycophancy_suite("grid test", f"[methods.base]\n[methods.decpo]\n{TRAIN}") + (
    '[grid]\n"methods.decpo.lambda" = [0.01]\n"methods.decpo.layer" = [0, 2]\n'
)
VARIANTS = ["decpo@lambda=0.01,layer=0", "decpo@lambda=0.01,layer=2"]


def test_expand_grid_names_variants_and_rejects_bad_keys():
    out = expand_grid({"dpo": {}, "decpo": {"lr": 1.0}}, {"methods.decpo.lambda": [1, 2], "methods.decpo.layer": [3]})
    assert list(out) == ["dpo", "decpo@lambda=1,layer=3", "decpo@lambda=2,layer=3"]
    assert out["decpo@lambda=2,layer=3"] == {"lr": 1.0, "lambda": 2, "layer": 3}
    with pytest.raises(ValueError, match="methods.<method>.<field>"):
        expand_grid({"decpo": {}}, {"decpo.lambda": [1]})
    with pytest.raises(ValueError, match="no \\[methods.sft\\] table"):
        expand_grid({"decpo": {}}, {"methods.sft.lr": [1]})


@pytest.fixture(scope="module")
def grid_suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "grid.toml"
    path.write_text(SUITE)
    return path


def test_grid_variants_are_jobs_read_at_their_layer_and_resume_after_a_kill(grid_suite, tmp_path):
    suite, _ = load_suite(str(grid_suite))
    assert list(suite.methods) == ["base", *VARIANTS]
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bench", "run", "suite", str(grid_suite), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list((out / "runs").glob("train-*")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = {p.name: (p / "stage.json").stat().st_mtime for p in (out / "runs").iterdir()}
    assert landed
    assert main(["run", "suite", str(grid_suite), "--out", str(out), "--device", "cpu"]) == 0
    assert all((out / "runs" / k / "stage.json").stat().st_mtime == t for k, t in landed.items())  # reused
    board = pd.read_csv(out / "leaderboard.csv").set_index("method")
    assert sorted(board.index) == sorted(["base", *VARIANTS])
    assert board.loc[VARIANTS, "hook_layer"].tolist() == [0, 2] and board.loc["base", "hook_layer"] == 1
    for variant, layer in zip(VARIANTS, (0, 2), strict=True):
        job = json.loads(next((out / "jobs").glob(f"*__sycophancy__{variant}__s0.json")).read_text())
        train = json.loads((out / "runs" / job["stages"]["train"] / "train.json").read_text())
        assert train["layer"] == layer
        acts = json.loads((out / "runs" / job["stages"]["acts"] / "manifest.json").read_text())
        assert acts["request"]["layer"] == layer  # the SAE's activations come from the regularised layer
    tidy = pd.read_csv(out / "metrics.csv")
    sae_rows = tidy[tidy.metric == "sae_explained_variance"].set_index("method")
    assert sae_rows.loc[VARIANTS, "layer"].astype(int).tolist() == [0, 2]
