"""The job schedule: a shared claim queue gives every job to exactly one worker, training jobs go first in
each task, and a job whose stage another process is building is set aside and resumed later."""

import fcntl
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from bench.cli import main
from bench.schedule import JobQueue, Schedule, longest_first


def _plan(task: str, method: str, seed: int = 0, train: bool = True):
    stages = [SimpleNamespace(name=n) for n in (["data", "train", "eval"] if train else ["data", "eval"])]
    job = SimpleNamespace(id=f"{task}__{method}__s{seed}", task=task, method=method, seed=seed)
    return SimpleNamespace(job=job, stages=stages)


def test_two_workers_sharing_a_queue_get_every_job_exactly_once(tmp_path):
    plans = [_plan("t", m) for m in "abcdefg"]
    queue = JobQueue(tmp_path / "q")
    a, b = Schedule(plans, queue, lambda k: False), Schedule(plans, JobQueue(tmp_path / "q"), lambda k: False)
    got: dict[str, list[str]] = {"a": [], "b": []}
    for name, s in [("a", a), ("b", b), ("b", b), ("a", a), ("a", a), ("b", b), ("a", a), ("b", b), ("a", a)]:
        if (item := s.next()) is not None:
            got[name].append(item[0].job.id)
    assert sorted(got["a"] + got["b"]) == sorted(p.job.id for p in plans)
    assert got["a"][:2] == ["t__a__s0", "t__d__s0"] and got["b"][:2] == ["t__b__s0", "t__c__s0"]
    assert a.next() is None and b.next() is None


def test_a_set_aside_job_resumes_when_its_stage_is_free_or_nothing_else_is_left():
    busy = {"k": True}
    s = Schedule([_plan("t", "a"), _plan("t", "b"), _plan("t", "c")], None, lambda key: busy[key])
    plan, wait = s.next()
    assert (plan.job.id, wait) == ("t__a__s0", False)
    s.set_aside(plan, "k")
    assert [(p.job.id, w) for p, w in [s.next()]] == [("t__b__s0", True)]  # may wait: one job is already aside
    busy["k"] = False
    assert [(p.job.id, w) for p, w in [s.next()]] == [("t__a__s0", False)]  # its stage is free again
    plan, _ = s.next()
    s.set_aside(plan, "k")  # c stops at a busy stage and nothing else is left: it waits for it
    busy["k"] = True
    assert [(p.job.id, w) for p, w in [s.next()]] == [("t__c__s0", True)]
    assert s.next() is None


def test_longest_first_puts_training_jobs_first_within_each_seed_and_task():
    plans = [
        _plan(t, m, seed, train=m != "base" and m != "rand")
        for seed in (0, 1)
        for t in "xy"
        for m in ("base", "dpo", "rand", "decpo")
    ]
    order = [(p.job.seed, p.job.task, p.job.method) for p in longest_first(plans)]
    assert order[:4] == [(0, "x", "dpo"), (0, "x", "decpo"), (0, "x", "base"), (0, "x", "rand")]
    assert [o[:2] for o in order[::4]] == [(0, "x"), (0, "y"), (1, "x"), (1, "y")]


def test_a_run_sets_aside_a_job_whose_stage_another_process_builds(smoke_run, tmp_path):
    """Another process holds the build lock of job 1's eval stage: the run finishes every other job first,
    then waits for the lock, rebuilds that stage and gets the same leaderboard."""
    out = tmp_path / "aside"
    shutil.copytree(smoke_run, out)
    first = next((out / "jobs").glob("*__toxicity__base__s0.json"))
    key = json.loads(first.read_text())["stages"]["eval"]
    shutil.rmtree(out / "runs" / key)
    start = time.time()
    (out / "locks").mkdir(exist_ok=True)
    lock = open(out / "locks" / f"{key}.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    others = [p for p in (out / "jobs").glob("*.json") if p != first]

    def release_when_the_others_are_done() -> None:
        while not all(p.stat().st_mtime >= start for p in others):
            time.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)

    helper = threading.Thread(target=release_when_the_others_are_done, daemon=True)
    helper.start()
    assert main(["run", "suite", "smoke", "--out", str(out), "--device", "cpu"]) == 0
    helper.join(timeout=5)
    lock.close()
    assert first.stat().st_mtime >= max(p.stat().st_mtime for p in others)  # it finished last
    assert (out / "runs" / key / "stage.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["stages_built"] == [key]
    drop = ["train_seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "leaderboard.csv").drop(columns=drop),
        pd.read_csv(Path(smoke_run) / "leaderboard.csv").drop(columns=drop),
    )
