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
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import __version__
from bench.core.errors import StoreError
from bench.core.io import DIR_MODE, read_json, stable_hash, write_json

log = logging.getLogger(__name__)
HOST = socket.gethostname().replace(".", "_") or "host"
"""This machine's name as it appears in temp-folder names (``<key>.<host>.<pid>.<random>``)."""
STALE_SECONDS = 24 * 3600
"""Another host's temp folder is removed only when untouched this long (its PID means nothing here)."""


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

    def __init__(self, out: Path, machine: dict[str, Any] | None = None):
        self.out = Path(out)
        self.machine = machine or {}
        """Recorded in each stage built here (``bench.manifest.machine``)."""
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
        """A finished stage: ``stage.json`` is readable and every record file it lists (not the weights and
        activations, which results/ folders do not commit) has its recorded size (a stage written before
        file lists existed is trusted as it is). A damaged stage is logged with the file
        and the reason, and reported as not done, so it is rebuilt."""
        record = self.path(key) / "stage.json"
        if not record.is_file():
            return False
        try:
            files = read_json(record).get("files")
        except StoreError as e:
            log.warning("stage %s is damaged (%s); rebuilding it", key, e)
            return False
        for name, size in (files or {}).items():
            if _is_artifact(name):
                continue  # weights and activations: checked by the stage that needs them (Stage.complete)
            f = self.path(key) / name
            why = "is missing" if not f.is_file() else None
            if why is None and f.stat().st_size != size:
                why = f"has {f.stat().st_size} bytes, not the {size} recorded"
            if why:
                log.warning("stage %s: %s %s; rebuilding the stage", key, name, why)
                return False
        return True

    @contextlib.contextmanager
    def build(self, key: str, spec: dict[str, Any], identity: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield an empty temp folder; on success it becomes ``runs/<key>`` (replacing any old one)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key}.{HOST}.{os.getpid()}.", dir=self.tmp))
        os.chmod(work, DIR_MODE)  # mkdtemp makes 0700; results folders are shared
        start = time.time()
        try:
            yield work
            write_json(
                work / "stage.json",
                {
                    "key": key,
                    "spec": spec,
                    "identity": identity or {},
                    "files": _file_sizes(work),
                    "machine": self.machine,
                    "seconds": round(time.time() - start, 3),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "monobench_version": __version__,
                },
            )
            final = self.path(key)
            if final.exists():  # --force, or a concurrent shard finished the same stage first
                trash = self.tmp / f"{key}.{HOST}.{os.getpid()}.old"
                os.replace(final, trash)
                os.replace(work, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(work, final)
            self.built.append(key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def clean_tmp(self, *, now: float | None = None) -> list[str]:
        """Remove leftovers of killed runs (shards and machines may share tmp/): this host's temp folders
        whose process is gone, and any folder untouched for ``STALE_SECONDS`` (another host's live work,
        whose PID cannot be checked from here, is left alone)."""
        removed, now = [], time.time() if now is None else now
        for p in self.tmp.glob("*") if self.tmp.exists() else []:
            parts = p.name.split(".")
            host, pid = (parts[1], parts[2]) if len(parts) > 3 else ("", "")
            mine = host == HOST and pid.isdigit()
            stale = now - p.stat().st_mtime > STALE_SECONDS
            if (mine and not _alive(int(pid))) or stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def write_failure(self, job_id: str, record: dict[str, Any]) -> None:
        """``failures/<job>.json``: why a job has no row (its finished stages stay in ``runs/``)."""
        write_json(self.out / "failures" / f"{job_id}.json", record)

    def clear_failure(self, job_id: str) -> None:
        (self.out / "failures" / f"{job_id}.json").unlink(missing_ok=True)

    def failures(self) -> list[dict[str, Any]]:
        folder = self.out / "failures"
        return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def write_job(self, job_id: str, record: dict[str, Any]) -> None:
        write_json(self.jobs / f"{job_id}.json", record)

    def job_records(self) -> list[dict[str, Any]]:
        if not self.jobs.exists():
            return []
        return [read_json(p) for p in sorted(self.jobs.glob("*.json"))]


ARTIFACT_SUFFIXES = (".npy", ".safetensors", ".bin", ".pt")
ARTIFACT_FOLDERS = ("policy", "sae", "trainer")


def _is_artifact(name: str) -> bool:
    """Weights and activations (.gitignore keeps them out of committed results), not small records."""
    return name.endswith(ARTIFACT_SUFFIXES) or Path(name).parts[0] in ARTIFACT_FOLDERS


def _file_sizes(folder: Path) -> dict[str, int]:
    """Relative path → size in bytes of every file under ``folder`` (the stage record's integrity list)."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
