"""Which job a run works on next: the shared job queue of ``--workers`` and setting aside a job whose next
stage another process is building.

Static shards (``--shard I/N``) split the job list by position, so a shard whose jobs happen to be longer
finishes last while the other worker idles, and a worker that reaches a stage another worker is building
(a task's data, the shared base SAE) waits for it. Under ``--workers N`` each worker instead claims the next
unclaimed job of one shared list (an ``O_EXCL`` file per job in the launch's queue folder) until none is
left, and the list puts the jobs that train a model first within each (seed, task): longest first, so the
short jobs fill the end. In every single-process mode, a job whose next stage is locked by another process
is set aside (up to four at once) and the process takes a job that needs none of the busy stages (often one
of the next task), else one with stages to build before a busy one (its training and eval while the shared
base SAE, read late by every job, trains); a set-aside job resumes once its stage's lock is free, and is
waited on when every job left starts with a busy stage or four are aside; its finished stages are reused.
Only the order in which a process builds stages changes — stage keys, and so the results, are those of a
one-process run. A worker killed mid-job leaves its claimed job unfinished for that launch (the launch exits
non-zero); the next run resumes it from the store.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from bench.plan import Plan

__all__ = ["QUEUE_ENV", "JobQueue", "Schedule", "longest_first", "queue_from_env"]

QUEUE_ENV = "MONOBENCH_JOB_QUEUE"
"""Environment variable naming the queue folder a ``--workers`` launch shares with its workers."""


class JobQueue:
    """Claims of one launch: ``<folder>/<job id>.claim``, created exclusively by the first worker asking."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def claim(self, job_id: str) -> bool:
        """True for exactly one caller per job and launch (``O_CREAT | O_EXCL`` is atomic on a local disk)."""
        try:
            fd = os.open(self.folder / f"{job_id}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True


def queue_from_env() -> JobQueue | None:
    """The queue of the ``--workers`` launch this process belongs to, if any."""
    folder = os.environ.get(QUEUE_ENV)
    return JobQueue(Path(folder)) if folder else None


def longest_first(plans: list[Plan]) -> list[Plan]:
    """Within each (seed, task) group, in the groups' order: the jobs with a ``train`` stage first, then the
    others (base model, random-init control), each part in suite order (a stable sort)."""
    group: dict[tuple[int, str], int] = {}
    for p in plans:
        group.setdefault((p.job.seed, p.job.task), len(group))
    trains = {p.job.id: any(s.name == "train" for s in p.stages) for p in plans}
    return sorted(plans, key=lambda p: (group[(p.job.seed, p.job.task)], not trains[p.job.id]))


class Schedule:
    """The jobs one process runs, in order: its own (static shard) or those it claims from a ``JobQueue``,
    plus up to ``MAX_ASIDE`` jobs set aside, each waiting for a stage that ``busy(key)`` says another process
    is building."""

    MAX_ASIDE = 4

    def __init__(self, plans: list[Plan], queue: JobQueue | None, busy: Callable[[str], bool]):
        self.todo = deque(plans)
        self.queue, self.busy = queue, busy
        self.aside: list[tuple[Plan, str]] = []

    def next(self) -> tuple[Plan, bool] | None:
        """The next job and whether it may wait for a busy stage (False: the runner raises ``StageBusy`` and
        the job is set aside); None when every job is done. First a set-aside job whose stage is free again;
        else the first job not yet taken that needs none of the busy stages (claimed from the queue); else
        — every job left starts with a busy stage, or ``MAX_ASIDE`` are aside — the oldest set-aside job,
        waiting for its stage. So a process never claims a job it could only wait on."""
        for i, (plan, key) in enumerate(self.aside):
            if not self.busy(key):
                del self.aside[i]
                return plan, False
        if len(self.aside) < self.MAX_ASIDE and (new := self._claim_free({k for _, k in self.aside})) is not None:
            return new, False
        if self.aside:
            return self.aside.pop(0)[0], True
        return None

    def _claim_free(self, busy: set[str]) -> Plan | None:
        """Take (claim, with a queue) the first job left whose stages include none of ``busy``; failing that,
        the first whose first stage is not busy: it has stages to build before it reaches a busy one (e.g.
        training and eval before the shared base SAE that every job reads late)."""
        for usable in (lambda p: not busy & {s.key for s in p.stages}, lambda p: p.stages[0].key not in busy):
            for plan in list(self.todo):
                if not usable(plan):
                    continue
                self.todo.remove(plan)
                if self.queue is None or self.queue.claim(plan.job.id):
                    return plan
        return None

    def set_aside(self, plan: Plan, key: str) -> None:
        """``plan`` stopped at stage ``key``, which another process is building."""
        self.aside.append((plan, key))
