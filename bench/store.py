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
import fcntl
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import __version__
from bench.core.errors import StoreError
from bench.core.io import DIR_MODE, file_digest, lock_descriptor, read_json, read_records, stable_hash, write_json

log = logging.getLogger(__name__)
HOST = socket.gethostname().replace(".", "_") or "host"
"""This machine's name as it appears in temp-folder names (``<key>.<host>.<pid>.<random>``)."""
STALE_SECONDS = 24 * 3600
"""Another host's temp folder is removed only when untouched this long (its PID means nothing here)."""


class StageBusy(Exception):
    """Another process holds the build lock of this stage key (``Store.claim(key, wait=False)``)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class Store:
    """Stages of one results folder."""

    def __init__(self, out: Path, machine: dict[str, Any] | None = None, *, verify: bool = False):
        self.out = Path(out)
        self.verify = verify
        """Also check every listed file's hash (``--verify``), not only its size."""
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
        activations, which results/ folders do not commit) has its recorded size — and, with ``verify``, its
        recorded hash, for every listed file present, weights included (a stage written before file lists
        existed is trusted as it is). A damaged stage is logged with the file and the reason, and reported as
        not done, so it is rebuilt."""
        record = self.path(key) / "stage.json"
        if not record.is_file():
            return False
        try:
            rec = read_json(record)
        except StoreError as e:
            log.warning("stage %s is damaged (%s); rebuilding it", key, e)
            return False
        hashes = rec.get("hashes") or {}
        for name, size in (rec.get("files") or {}).items():
            if why := _file_problem(self.path(key), name, size, hashes.get(name) if self.verify else None):
                log.warning("stage %s: %s %s; rebuilding the stage", key, name, why)
                return False
        return True

    @contextlib.contextmanager
    def claim(self, key: str, *, wait: bool = True) -> Iterator[None]:
        """Hold ``locks/<key>.lock`` (an exclusive ``flock``) while building ``key``: a second run of the same
        job, in another process or PID namespace, waits here and then reuses the stage instead of computing
        it again. There is no global lock: runs of different stages proceed side by side. With ``wait=False``
        a lock held elsewhere raises ``StageBusy`` instead (the scheduler then runs another job meanwhile)."""
        lock = self.out / "locks" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock_descriptor(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise StageBusy(key) from None
                log.info("waiting for another run that is building %s", key)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def claimed_elsewhere(self, key: str) -> bool:
        """Whether some process (any PID namespace on this host) holds ``key``'s build lock now."""
        lock = self.out / "locks" / f"{key}.lock"
        if not lock.is_file():
            return False
        with lock_descriptor(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

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
            hashes = _file_hashes(work)
            record = {
                "key": key,
                "spec": spec,
                "identity": identity or {},
                "files": _file_sizes(work),
                "hashes": hashes,
                "machine": self.machine,
                "seconds": round(time.time() - start, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "monobench_version": __version__,
            }
            if rebuilt := _rebuild_record(key, self.path(key) / "stage.json", hashes):
                record["rebuilt"] = rebuilt
            write_json(work / "stage.json", record)
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
        whose stage nobody is building (its key's lock is free — a PID means nothing across PID namespaces),
        and any folder untouched for ``STALE_SECONDS`` (another host's live work, whose lock and PID cannot
        be checked from here, is left alone until then)."""
        removed, now = [], time.time() if now is None else now
        for p in self.tmp.glob("*") if self.tmp.exists() else []:
            parts = p.name.split(".")
            key, host = (parts[0], parts[1]) if len(parts) > 3 else ("", "")
            try:  # a shard starting beside us may have removed it since the glob
                stale = now - p.stat().st_mtime > STALE_SECONDS
            except FileNotFoundError:
                continue
            mine = host == HOST and not self.claimed_elsewhere(key)
            if mine or stale:
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
        return read_records(folder)

    def write_job(self, name: str, record: dict[str, Any]) -> None:
        """``jobs/<name>.json`` (``record_name``); replaces a record of the same job and model written under the
        old name ``jobs/<task>__<method>__s<seed>.json`` (monobench ≤ 0.2), so it cannot shadow the new one."""
        write_json(self.jobs / f"{name}.json", record)
        legacy = self.jobs / f"{record['job']}.json"
        if legacy.is_file() and legacy.name != f"{name}.json" and read_json(legacy).get("model") == record["model"]:
            legacy.unlink()

    def job_records(self) -> list[dict[str, Any]]:
        return read_records(self.jobs)


def record_name(model_id: str, job_id: str) -> str:
    """File stem of a job's record (``jobs/``, ``failures/``): the model and the job (task, method or grid
    variant, seed), so one folder holds several models and suites without one row replacing another.
    ``embedded:smollm2-135m-instruct`` + ``toxicity__dpo__s0`` → ``embedded-smollm2-135m-instruct-<6 hex>__
    toxicity__dpo__s0`` (the hash tells apart ids that differ only in punctuation)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")[-48:] or "model"
    return f"{slug}-{stable_hash(model_id, n=6)}__{job_id}"


ARTIFACT_SUFFIXES = (".npy", ".safetensors", ".bin", ".pt")
ARTIFACT_FOLDERS = ("policy", "sae", "trainer", "tokenizer")


def _is_artifact(name: str) -> bool:
    """Weights and activations (.gitignore keeps them out of committed results), not small records: a file
    with an artifact suffix, or inside an artifact folder at any depth (``grid/L7-k16/sae/cfg.json``)."""
    return name.endswith(ARTIFACT_SUFFIXES) or any(p in ARTIFACT_FOLDERS for p in Path(name).parts[:-1])


def _file_problem(folder: Path, name: str, size: int, digest: str | None) -> str | None:
    """Why a stage's listed file cannot be trusted (None if it can): missing, resized or, when ``digest`` is
    given, changed. Missing weights and activations are the stage's own check (``Stage.complete``)."""
    f = folder / name
    if not f.is_file():
        return None if _is_artifact(name) else "is missing"
    if f.stat().st_size != size:
        return f"has {f.stat().st_size} bytes, not the {size} recorded"
    if digest is not None and file_digest(f) != digest:
        return "has changed since it was written (its hash differs from the recorded one)"
    return None


def _rebuild_record(key: str, old: Path, hashes: dict[str, str]) -> dict[str, Any] | None:
    """What a rebuild of a stage that had a record (its weights lost with a machine, or ``--force``) changed:
    the earlier build's finish time and the files whose hash differs (same key, so any difference is float
    rounding of another CPU or library build, or nondeterminism). Logged as a warning when some differ, so
    results built from both builds can be told apart; None when there was no earlier record."""
    try:
        before = read_json(old)
    except (OSError, StoreError):
        return None
    if not isinstance(before, dict):
        return None
    earlier = before.get("hashes") or {}
    changed = sorted(n for n in hashes.keys() & earlier.keys() if hashes[n] != earlier[n] and n != "stage.json")
    if changed:
        log.warning(
            "stage %s rebuilt with different %s than its earlier build (%s)",
            key,
            ", ".join(changed),
            before.get("finished", "?"),
        )
    return {"previous_finished": before.get("finished"), "changed_files": changed}


def _file_hashes(folder: Path) -> dict[str, str]:
    """Relative path → ``file_digest`` of every file under ``folder`` (checked by ``--verify``)."""
    return {str(f.relative_to(folder)): file_digest(f) for f in sorted(folder.rglob("*")) if f.is_file()}


def _file_sizes(folder: Path) -> dict[str, int]:
    """Relative path → size in bytes of every file under ``folder`` (the stage record's integrity list)."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
