"""``run suite … --workers N``: the suite's jobs in N local processes sharing one folder and one job queue.

The default model is small enough that a forward or backward pass gains little from a second intra-op
thread on a 2-core CPU, while two jobs side by side each keep a core busy; so N single-threaded workers
finish a suite about N times sooner than one process (measured in README "Budgets"). Each worker gets
``cpu_count // N`` threads (at least 1). Worker i runs as ``--shard i/N`` (its manifest record) but takes
its jobs from the launch's shared queue (``bench.schedule``: the next unclaimed job, training jobs first in
each task) instead of a fixed slice, and sets a job aside while another worker builds the stage it needs.
Stages are written atomically into the shared folder, and a stage two workers both need is built by the
first to claim its lock (``Store.claim``) — so the result equals a one-process run's.
After all workers end, the leaderboard and manifest are rewritten over the whole folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.core.io import write_json
from bench.leaderboard import write_leaderboard
from bench.manifest import merge_shard_manifests, write_manifest
from bench.progress import Overview
from bench.schedule import QUEUE_ENV
from bench.store import HOST


def worker_command(args, i: int, n: int) -> list[str]:
    """The ``python -m bench run suite`` command line of worker ``i`` of ``n`` (1-based)."""
    cmd = [sys.executable, "-m", "bench", "run", "suite", args.suite, "--out", str(args.out), "--shard", f"{i}/{n}"]
    cmd += ["--device", args.device] + [f"--seed={s}" for s in args.seed or []] + (["--force"] if args.force else [])
    cmd += ["--verify"] if getattr(args, "verify", False) else []
    return cmd


def run_workers(args, n: int, jobs: list[str] | None = None, records: Path | None = None) -> int:
    """Run the N shards side by side and wait for all; returns the worst exit status (0 when all succeed).

    With ``jobs`` (job id → its record file under ``records``), this process shows the live overview of all
    workers' jobs (``bench.progress``), counting a job done when its record is (re)written; the workers
    print only their summary lines."""
    threads = str(max(1, (os.cpu_count() or 1) // n))
    queue = Path(args.out) / "locks" / f"queue-{HOST}.{os.getpid()}.{time.time_ns()}"  # this launch's job claims
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, MONOBENCH_WORKER="1")
    env[QUEUE_ENV] = str(queue)
    env.setdefault("TQDM_DISABLE", "1")  # the libraries' progress bars (SAELens, GGUF, weights) would interleave
    procs = [subprocess.Popen(worker_command(args, i, n), env=env) for i in range(1, n + 1)]
    live = bool(jobs) and records is not None and sys.stderr.isatty()
    view = Overview(
        f"suite {args.suite} ({n} workers)",
        {j: [] for j in jobs or []},
        Path(args.out) / "runs",
        enabled=live,
        echo=lambda *_: None,
    )
    start = time.time()
    try:
        while any(p.poll() is None for p in procs):
            for job in list(view.left) if live else []:
                f = Path(records or ".") / f"{job}.json"
                if f.is_file() and f.stat().st_mtime >= start:
                    view.job_done(job, None)
            time.sleep(1.0)
    finally:
        view.close()
        code = max(p.wait() for p in procs)
        shutil.rmtree(queue, ignore_errors=True)
    return code


def finish(out: Path, suite, suite_file: Path | None, *, device: str, seeds: list[int]) -> None:
    """Leaderboard and manifest of the whole folder once every worker has written its jobs."""
    man = write_manifest(out, suite, suite_file, device=device, seeds=seeds, shard=(1, 1))
    if (merged := merge_shard_manifests(out)) is not None:  # what the workers built, per worker
        write_json(out / "manifest.json", man | {k: merged[k] for k in ("stages_built", "stages_reused", "shards")})
    write_leaderboard(out)
