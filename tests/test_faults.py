"""Fault injection: inputs changed in place, damaged stage files — the store never returns a stale or
partial result."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.models import TinySpec, load_model


def _claims(path: Path, flip: bool = False) -> None:
    pairs = [(a, b) for a, b in ((3, 5), (9, 2), (7, 1), (2, 8), (6, 4), (1, 9), (8, 3), (4, 6), (5, 7), (12, 10))]
    rows = [{"claim": f"{a} is larger than {b}.", "truth": (a > b) != flip} for a, b in pairs]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)


def _suite(tmp: Path, model: Path, source: Path) -> Path:
    suite = tmp / "local.toml"
    suite.write_text(
        f'seeds = [0]\n[model]\nid = "{model}"\n[hook]\nlayer = 1\n[proxies]\nn_texts = 4\n'
        f'[tasks.sycophancy]\nsource = "{source}"\ncolumns = {{ text = "claim", label = "truth" }}\n'
        "n_train = 4\nn_eval = 5\nn_eval_unseen = 0\n[methods.base]\n"
    )
    return suite


def _save_tiny(folder: Path, seed: int) -> None:
    model, tok = load_model("tiny:llama", seed=seed, tiny=TinySpec())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def _run(suite: Path, out: Path) -> dict:
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def local_run(tmp_path):
    model, source, out = tmp_path / "model", tmp_path / "claims.jsonl", tmp_path / "out"
    _save_tiny(model, seed=0)
    _claims(source)
    suite = _suite(tmp_path, model, source)
    _run(suite, out)
    return suite, model, source, out


def test_weights_replaced_in_place_rebuild_every_stage(local_run):
    suite, model, _, out = local_run
    before = pd.read_csv(out / "leaderboard.csv")
    _save_tiny(model, seed=1)  # other weights, same folder, same path
    man = _run(suite, out)
    assert man["stages_reused"] == [] and len(man["stages_built"]) == 3  # data, eval, proxies
    after = pd.read_csv(out / "leaderboard.csv")
    assert before["config_hash"][0] != after["config_hash"][0]
    assert before["decorrelation"][0] != after["decorrelation"][0]


def test_data_file_rewritten_in_place_rebuilds_its_stages(local_run):
    suite, _, source, out = local_run
    _claims(source, flip=True)
    man = _run(suite, out)
    assert not man["stages_reused"] and len(man["stages_built"]) == 3


def test_deleted_or_truncated_stage_file_is_rebuilt(local_run, caplog):
    suite, _, _, out = local_run
    job = json.loads(next((out / "jobs").glob("*.json")).read_text())
    metrics = out / "runs" / job["stages"]["eval"] / "metrics.json"
    metrics.write_text(metrics.read_text()[:10])  # truncated
    man = _run(suite, out)
    assert man["stages_built"] == [job["stages"]["eval"]] and "metrics.json has" in caplog.text
    (out / "runs" / job["stages"]["proxies"] / "metrics.json").unlink()
    man = _run(suite, out)
    assert man["stages_built"] == [job["stages"]["proxies"]] and "metrics.json is missing" in caplog.text
    assert pd.read_csv(out / "leaderboard.csv")["decorrelation"].notna().all()
