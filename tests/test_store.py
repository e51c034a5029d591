"""Results store: content-addressed keys, atomic stage folders, leaderboard rendering from records."""

import json

import pandas as pd
import pytest

from bench.core.io import stable_hash, write_json
from bench.leaderboard import write_leaderboard
from bench.store import Store


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    with pytest.raises(ValueError):
        stable_hash({"a": float("nan")})  # NaN never becomes part of a key


def test_stage_is_atomic(tmp_path):
    store = Store(tmp_path)
    key = store.key("data", {"task": "t"}, "1")
    with pytest.raises(RuntimeError):
        with store.build(key, {"task": "t"}) as work:
            (work / "half.json").write_text("{")
            raise RuntimeError("killed")
    assert not store.done(key) and not store.path(key).exists()
    assert list(store.tmp.iterdir()) == []  # the failed temp folder is gone
    with store.build(key, {"task": "t"}) as work:
        write_json(work / "metrics.json", [{"metric": "m", "value": 1.0}])
    assert store.done(key)
    meta = json.loads((store.path(key) / "stage.json").read_text())
    assert meta["key"] == key and meta["spec"] == {"task": "t"}


def test_rebuild_replaces_old_folder(tmp_path):
    store = Store(tmp_path)
    key = store.key("x", {}, "1")
    for v in (1.0, 2.0):
        with store.build(key, {}) as work:
            write_json(work / "metrics.json", [{"metric": "m", "value": v}])
    assert json.loads((store.path(key) / "metrics.json").read_text())[0]["value"] == 2.0
    assert [p.name for p in store.runs.iterdir()] == [key]


def test_clean_tmp_removes_dead_leftovers_only(tmp_path):
    import os

    store = Store(tmp_path)
    (store.tmp / "data-abc.999999999.x").mkdir(parents=True)
    (store.tmp / f"data-abc.{os.getpid()}.y").mkdir()
    removed = store.clean_tmp()
    assert removed == ["data-abc.999999999.x"]
    assert (store.tmp / f"data-abc.{os.getpid()}.y").exists()


def _fake_job(store, task, method, seed, value, hook=1):
    keys = {}
    for stage, recs in {
        "eval": [{"metric": "align_score", "value": value}],
        "proxies": [{"metric": "decorrelation", "value": value + l, "layer": l} for l in range(3)],
    }.items():
        key = store.key(stage, {"t": task, "m": method, "s": seed}, "1")
        with store.build(key, {}) as work:
            write_json(work / "metrics.json", recs)
        keys[stage] = key
    store.write_job(
        f"{task}__{method}__s{seed}",
        {
            "job": "j",
            "suite": "s",
            "model": "tiny:llama",
            "task": task,
            "method": method,
            "seed": seed,
            "hook_layer": hook,
            "config_hash": "c",
            "monobench_version": "0",
            "stages": keys,
        },
    )


def test_leaderboard_pivots_hook_layer_and_keeps_all_layers_in_tidy(tmp_path):
    store = Store(tmp_path)
    _fake_job(store, "tox", "dpo", 0, 0.5)
    _fake_job(store, "tox", "base", 0, 0.25)
    board = write_leaderboard(tmp_path)
    assert list(board["method"]) == ["base", "dpo"]  # canonical method order
    assert board.loc[board.method == "dpo", "decorrelation"].item() == 1.5  # layer 1 = hook layer
    tidy = pd.read_csv(tmp_path / "metrics.csv")
    assert len(tidy[tidy.metric == "decorrelation"]) == 6
    assert list(tidy.columns) == ["suite", "model", "task", "method", "seed", "layer", "sae", "metric", "value"]
    assert not (tmp_path / "leaderboard_seeds.csv").exists()


def test_merging_two_seed_folders_adds_ci_columns(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_job(Store(a), "tox", "dpo", 0, 0.5)
    _fake_job(Store(b), "tox", "dpo", 1, 0.7)
    board = write_leaderboard(tmp_path / "merged", [a, b])
    assert sorted(board.seed) == [0, 1]
    summary = pd.read_csv(tmp_path / "merged" / "leaderboard_seeds.csv")
    row = summary.iloc[0]
    assert row.n_seeds == 2 and row.align_score == pytest.approx(0.6)
    # t_{0.975, 1} = 12.706; sd = 0.1414; half-width = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert row.align_score_ci95 == pytest.approx(12.7062 * 0.141421 / 2**0.5, rel=1e-3)
