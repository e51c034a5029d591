"""Content-addressed results store: one folder per stage, written atomically.

``<out>/runs/<stage>-<hash>/`` holds one stage's artifacts plus ``stage.json`` (its spec, timings and
provenance). The hash covers everything that determines the stage — its config, upstream stage keys,
seed, the content identity of its inputs and the version of the code that computes it — and nothing
else (SPEC §1, STYLE §4). A stage is built in
``<out>/tmp/`` and renamed into place only when it finished, so a killed run never leaves a half
artifact under ``runs/``; a re-run skips stages whose folder exists; ``force`` rebuilds them.
Per-job records (``<out>/jobs/<job>.json``) name the stage keys of each job's latest run, so several
shards or machines can fill one folder and ``bench leaderboard`` merges them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import __version__
from bench.core.io import read_json, stable_hash, write_json


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Stages of one results folder."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.runs = self.out / "runs"
        self.jobs = self.out / "jobs"
        self.tmp = self.out / "tmp"
        self.built: list[str] = []
        self.reused: list[str] = []

    def key(self, stage: str, spec: dict[str, Any], version: str) -> str:
        """``<stage>-<hash>``: a hash of the stage's name, code version and spec (upstream keys included)."""
        return f"{stage}-{stable_hash({'stage': stage, 'stage_version': version, **spec})}"

    def path(self, key: str) -> Path:
        return self.runs / key

    def done(self, key: str) -> bool:
        return (self.path(key) / "stage.json").is_file()

    @contextlib.contextmanager
    def build(self, key: str, spec: dict[str, Any], identity: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield an empty temp folder; on success it becomes ``runs/<key>`` (replacing any old one)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key}.{os.getpid()}.", dir=self.tmp))
        start = time.time()
        try:
            yield work
            write_json(
                work / "stage.json",
                {
                    "key": key,
                    "spec": spec,
                    "identity": identity or {},
                    "seconds": round(time.time() - start, 3),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "monobench_version": __version__,
                },
            )
            final = self.path(key)
            if final.exists():  # --force, or a concurrent shard finished the same stage first
                trash = self.tmp / f"{key}.old.{os.getpid()}"
                os.replace(final, trash)
                os.replace(work, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(work, final)
            self.built.append(key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def clean_tmp(self) -> list[str]:
        """Remove leftovers of killed runs: temp folders whose process is gone (shards may share tmp/)."""
        removed = []
        for p in self.tmp.glob("*") if self.tmp.exists() else []:
            parts = p.name.split(".")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            if pid is None or not _alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def write_job(self, job_id: str, record: dict[str, Any]) -> None:
        write_json(self.jobs / f"{job_id}.json", record)

    def job_records(self) -> list[dict[str, Any]]:
        if not self.jobs.exists():
            return []
        return [read_json(p) for p in sorted(self.jobs.glob("*.json"))]
