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
    names = ["data", "train", "eval"] if train else ["data", "eval"]
    stages = [SimpleNamespace(name=n, key=f"{n}-{task}" if n == "data" else f"{n}-{task}-{method}") for n in names]
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


def test_a_set_aside_job_resumes_when_its_stage_is_free_and_meanwhile_jobs_not_needing_it_run():
    busy = {"data-x": True, "eval-y-a": True}
    plans = [_plan("x", "a"), _plan("x", "b"), _plan("y", "a"), _plan("y", "b")]
    s = Schedule(plans, None, lambda key: busy.get(key, False))
    ran = []

    def step(stops_at: str | None = None) -> None:
        plan, wait = s.next()
        ran.append((plan.job.id, wait))
        if stops_at is not None:
            s.set_aside(plan, stops_at)

    step("data-x")  # x/a stops at x's data, which another process builds
    step("eval-y-a")  # not x/b (it needs x's data too) but y/a, which stops at its eval
    step()  # y/b needs neither busy stage
    busy["eval-y-a"] = False
    step()  # y/a again: its stage is free now
    step()  # only x/a and x/b are left, both need the busy data: wait for it with x/a rather than claim x/b
    busy["data-x"] = False
    step()
    assert ran == [
        ("x__a__s0", False),
        ("y__a__s0", False),
        ("y__b__s0", False),
        ("y__a__s0", False),
        ("x__a__s0", True),
        ("x__b__s0", False),
    ]
    assert s.next() is None


def test_while_a_stage_every_job_reads_late_is_busy_jobs_build_their_earlier_stages():
    """A shared stage late in every plan (the base SAE): jobs are still claimed and run up to it, four at
    most set aside; then the oldest waits for it."""
    plans = []
    for m in "abcdef":
        p = _plan("x", m)
        p.stages.append(SimpleNamespace(name="base_sae", key="base_sae"))
        plans.append(p)
    s = Schedule(plans, None, lambda key: key == "base_sae")
    ran = []
    for _ in range(5):
        plan, wait = s.next()
        ran.append((plan.job.method, wait))
        if not wait:
            s.set_aside(plan, "base_sae")
    assert ran == [("a", False), ("b", False), ("c", False), ("d", False), ("a", True)]


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
