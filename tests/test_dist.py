"""Two CPU processes under ``torchrun``: the train stage runs data-parallel through TRL/accelerate and
gives the one-process numbers; every other stage is computed once, by rank 0."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]

SUITE = """
description = "toxicity, base + DPO on the tiny model: the torchrun test"
seeds = [0]
[model]
id = "tiny:llama"
tiny = { n_layers = 2, d_model = 64, d_mlp = 128, n_heads = 4, n_kv_heads = 2 }
[hook]
module = "mlp.up_proj"
layer = 1
[proxies]
n_texts = 16
[tasks.toxicity]
n_train = 8
n_eval = 6
max_new_tokens = 4
candidate_factor = 2.0
[methods.base]
[methods.dpo]
max_steps = 3
batch_size = 4
lr = 1e-3
eval_every = 3
curve_pairs = 2
curve_prompts = 4
max_length = 64
max_prompt_length = 48
lora_dropout = 0.0   # dropout masks would differ between ranks; without it the two runs compute the same
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process group on Linux")
def test_torchrun_two_processes_match_one_process(tmp_path):
    suite = tmp_path / "dist.toml"
    suite.write_text(SUITE)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", "suite", str(suite), "--out", str(one), "--device", "cpu"]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "bench",
            "run",
            "suite",
            str(suite),
            "--out",
            str(two),
            "--device",
            "cpu",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("suite dist:") == 1  # only rank 0 reports and writes

    (train,) = (two / "runs").glob("train-*")
    assert json.loads((train / "train.json").read_text()) == {
        "processes": 2,
        "global_batch_size": 4,
        "per_process_batch_size": 2,
        "layer": 1,
    }
    assert not list((two / "tmp").glob("*"))  # rank 1's scratch folder is gone
    assert sorted(p.name for p in (two / "runs").iterdir()) == sorted(p.name for p in (one / "runs").iterdir())

    a, b = (pd.read_csv(d / "leaderboard.csv").set_index(["task", "method"]) for d in (one, two))
    cols = ["pref_acc", "reward_margin", "decorrelation", "align_score"]
    pd.testing.assert_frame_equal(a.loc[[("toxicity", "base")], cols], b.loc[[("toxicity", "base")], cols])
    # same global batch and data order; only the gradient all-reduce changes float rounding
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-3, atol=1e-4)
    ca, cb = (pd.read_csv(next((d / "runs").glob("train-*")) / "curves.csv") for d in (one, two))
    pd.testing.assert_series_equal(ca["trainer/loss"].dropna(), cb["trainer/loss"].dropna(), rtol=1e-3)


def test_batch_size_must_split_over_processes(monkeypatch):
    from bench.align import _common_args
    from bench.methods import DPOMethodConfig

    monkeypatch.setenv("WORLD_SIZE", "3")
    import torch

    with pytest.raises(ValueError, match="batch_size = 4 is not divisible by the 3 processes"):
        _common_args(DPOMethodConfig(batch_size=4), Path("/tmp"), 0, torch.device("cpu"), False)
