"""Results store: content-addressed keys, atomic stage folders, leaderboard rendering from records."""

import fcntl
import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from bench.core.io import file_lock, lock_descriptor, stable_hash, write_json
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


def test_a_rebuild_records_which_files_differ_from_the_earlier_build(tmp_path, caplog):
    """Weights lost with a machine are rebuilt under the same key; on another CPU they may differ by float
    rounding (the reference run's corpus activations did): the new record says so, and a warning names them."""
    store = Store(tmp_path)
    key = store.key("x", {}, "1")
    builds = []
    for v in (1.0, 1.0, 2.0):
        with caplog.at_level(logging.WARNING, logger="bench.store"):
            caplog.clear()
            with store.build(key, {}) as work:
                write_json(work / "metrics.json", [{"metric": "m", "value": v}])
                (work / "weights.npy").write_bytes(b"w")
        builds.append((json.loads((store.path(key) / "stage.json").read_text()), caplog.text))
    assert "rebuilt" not in builds[0][0]
    assert builds[1][0]["rebuilt"] == {"previous_finished": builds[0][0]["finished"], "changed_files": []}
    assert "rebuilt with different" not in builds[1][1]
    assert builds[2][0]["rebuilt"]["changed_files"] == ["metrics.json"]
    assert "rebuilt with different metrics.json" in builds[2][1]


def test_clean_tmp_removes_this_hosts_dead_leftovers_only(tmp_path):
    """A temp folder is live while its key's build lock is held — whatever its PID says (a run in another
    PID namespace has PIDs that mean nothing here) — and another host's folder is kept until stale."""
    import os
    import time

    from bench.store import HOST, STALE_SECONDS

    store = Store(tmp_path)
    dead = f"data-dead.{HOST}.{os.getpid()}.x"  # our own PID, but nobody builds data-dead
    live = f"data-live.{HOST}.999999999.y"  # a PID that does not exist here: another namespace's live run
    other = "data-abc.otherhost.1.z"
    gone_other = "data-abc.otherhost.2.w"
    for name in (dead, live, other, gone_other):
        (store.tmp / name).mkdir(parents=True)
    old = time.time() - STALE_SECONDS - 60
    os.utime(store.tmp / gone_other, (old, old))
    with store.claim("data-live"):
        assert sorted(store.clean_tmp()) == sorted([dead, gone_other])
    assert (store.tmp / live).exists() and (store.tmp / other).exists()
    assert store.clean_tmp() == [live]  # its run is gone now


def test_clean_tmp_skips_a_folder_another_shard_removed_meanwhile(tmp_path, monkeypatch):
    """Two shards start on one folder and both clean ``tmp/``: a folder listed by our glob but removed by the
    other shard before our ``stat`` is skipped, not a crash (it was, in the reference run)."""
    from pathlib import Path

    from bench.store import HOST

    store = Store(tmp_path)
    kept = f"data-dead.{HOST}.1.x"
    (store.tmp / kept).mkdir(parents=True)
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pat: [self / f"data-gone.{HOST}.2.y", *real_glob(self, pat)])
    assert store.clean_tmp() == [kept]


def test_verify_checks_hashes_of_every_listed_file(tmp_path, caplog):
    """Sizes catch truncation; ``--verify`` also catches a same-size change (weights included)."""
    key = Store(tmp_path).key("sae", {}, "1")
    with Store(tmp_path).build(key, {}) as work:
        write_json(work / "metrics.json", [])
        (work / "sae").mkdir()
        (work / "sae" / "sae_weights.safetensors").write_bytes(b"w" * 8)
    (Store(tmp_path).path(key) / "sae" / "sae_weights.safetensors").write_bytes(b"x" * 8)
    assert Store(tmp_path).done(key)
    assert not Store(tmp_path, verify=True).done(key)
    assert "sae/sae_weights.safetensors has changed since it was written" in caplog.text


def test_a_stage_with_a_missing_or_damaged_file_is_rebuilt(tmp_path, caplog):
    store = Store(tmp_path)
    key = store.key("eval", {}, "1")
    with store.build(key, {}) as work:
        write_json(work / "metrics.json", [{"metric": "m", "value": 1.0}])
        (work / "sub").mkdir()
        (work / "sub" / "w.json").write_bytes(b"1234")
    rec = json.loads((store.path(key) / "stage.json").read_text())
    assert rec["files"]["sub/w.json"] == 4 and "metrics.json" in rec["files"]
    assert store.done(key)
    (store.path(key) / "sub" / "w.json").write_bytes(b"12")  # truncated
    assert not store.done(key) and "sub/w.json has 2 bytes, not the 4 recorded" in caplog.text
    (store.path(key) / "metrics.json").unlink()
    assert not store.done(key) and "metrics.json is missing" in caplog.text
    (store.path(key) / "stage.json").write_text('{"key": ')
    assert not store.done(key) and "is damaged" in caplog.text


def test_uncommitted_weights_do_not_make_a_committed_stage_stale(tmp_path):
    """results/ folders commit records, not weights (.gitignore): a clone without them still reuses the stage."""
    store = Store(tmp_path)
    key = store.key("sae", {}, "1")
    with store.build(key, {}) as work:
        write_json(work / "metrics.json", [])
        (work / "sae").mkdir()
        (work / "sae" / "sae_weights.safetensors").write_bytes(b"w" * 8)
        (work / "acts.npy").write_bytes(b"a" * 8)
    (store.path(key) / "sae" / "sae_weights.safetensors").unlink()
    (store.path(key) / "acts.npy").unlink()
    assert store.done(key)


NESTED = {  # stage → (files committed, artifacts left out), the SAE grid's nested stores and SAEs included
    "acts": (["manifest.json", "layer2/manifest.json"], ["tokenizer/tokenizer.json", "layer2/tokenizer/vocab.json",
                                                         "layer2/acts.npy"]),
    "sae": (["eval_results.json", "grid/L2-k4/eval_results.json"], ["sae/cfg.json", "grid/L2-k4/sae/cfg.json",
                                                                    "grid/L2-k4/sae/training.json"]),
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(NESTED))
def test_nested_artifacts_are_gitignored_and_their_absence_keeps_a_stage_done(tmp_path, stage):
    import subprocess

    kept, dropped = NESTED[stage]
    root = Path(__file__).resolve().parents[1]
    names = [f"results/x/runs/{stage}-0123/{n}" for n in kept + dropped]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=root, capture_output=True, text=True
    ).stdout.split()
    assert out == names[len(kept) :]  # .gitignore drops exactly the artifacts
    store = Store(tmp_path)
    key = store.key(stage, {}, "1")
    with store.build(key, {}) as work:
        for n in kept + dropped:
            (work / n).parent.mkdir(parents=True, exist_ok=True)
            (work / n).write_text("x")
    for n in dropped:
        (store.path(key) / n).unlink()
    assert store.done(key)
    (store.path(key) / kept[-1]).unlink()
    assert not store.done(key)


def test_stage_folders_and_files_are_readable_by_others(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        store = Store(tmp_path)
        key = store.key("eval", {}, "1")
        with store.build(key, {}) as work:
            write_json(work / "metrics.json", [])
    finally:
        os.umask(old)
    assert store.path(key).stat().st_mode & 0o777 == 0o755
    assert (store.path(key) / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (store.path(key) / "stage.json").stat().st_mode & 0o777 == 0o644


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


def test_readers_skip_records_being_written_by_another_worker(tmp_path, monkeypatch):
    """A worker's ``jobs/.<name>.json.<random>.json`` temp file (half written, renamed away at any moment)
    is not a record: listing it once crashed the other worker's manifest (FileNotFoundError)."""
    import bench.core.io as io
    from bench.manifest import stage_machines

    write_json(tmp_path / "jobs" / "a.json", {"job": "a", "stages": {}})
    (tmp_path / "jobs" / ".b.json.x1y2z3.json").write_text('{"job": "b", "sta')
    assert [r["job"] for r in Store(tmp_path).job_records()] == ["a"]
    assert stage_machines(tmp_path) == []
    write_json(tmp_path / "failures" / "c.json", {"job": "c", "error": "x"})
    write_json(tmp_path / "failures" / "d.json", {"job": "d", "error": "y"})
    real = io.read_json

    def cleared_meanwhile(path):  # another process cleared c's failure after the listing
        if Path(path).name == "c.json":
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(io, "read_json", cleared_meanwhile)
    assert [r["job"] for r in Store(tmp_path).failures()] == ["d"]


def test_a_lock_file_we_cannot_write_still_locks(tmp_path, monkeypatch):
    """Another user of a shared results folder may own a lock file (mode 0644): locking falls back to a
    read-only descriptor (a local ``flock`` needs no write access) instead of failing with PermissionError;
    a lock file we can write is opened read-write (NFS's emulated ``flock`` needs that)."""
    store = Store(tmp_path / "out")
    (tmp_path / "out" / "locks").mkdir(parents=True)
    with lock_descriptor(tmp_path / "mine.lock") as fd:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    real_open = os.open

    def not_ours(path, flags, *mode):  # root may write any file, so the other user's 0444 file is simulated
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    for lock in (tmp_path / "out" / "locks" / "k.lock", tmp_path / "memo.lock"):
        lock.touch(mode=0o444)
    monkeypatch.setattr(os, "open", not_ours)
    with lock_descriptor(tmp_path / "memo.lock") as fd:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    with store.claim("k"):
        assert store.claimed_elsewhere("k")  # a second open file description of the same lock conflicts
    assert not store.claimed_elsewhere("k")
    with file_lock(tmp_path / "memo.json"):
        with lock_descriptor(tmp_path / "memo.lock") as fd, pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert (tmp_path / "memo.lock").stat().st_mode & 0o777 == 0o444
