"""Atomic file writes with one file-mode policy: temp file in the target folder, then ``os.replace``.

Every result file (JSON, CSV, text) is written whole or not at all — a killed run or a full disk never
leaves a half-written file where a complete one was — and with mode 0644 (folders 0755) whatever
``mkstemp`` chose, so a results folder can be shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.core.errors import StoreError

FILE_MODE, DIR_MODE = 0o644, 0o755


def cache_dir() -> Path:
    """Root of monobench's cache (converted models, file hashes, context embeddings): ``$MONOBENCH_CACHE``
    or ``~/.cache/monobench``."""
    return Path(os.environ.get("MONOBENCH_CACHE", Path.home() / ".cache" / "monobench"))


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), first ``n`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def read_json(path: Path) -> Any:
    """Parse a JSON file; a damaged one is a ``StoreError`` that names it (never a bare decode error)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise StoreError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); it is damaged — delete it "
            "(a results stage folder is then rebuilt) or restore it"
        ) from e


def json_records(folder: Path, pattern: str = "*.json") -> list[Path]:
    """The finished records ``folder/pattern``, sorted; not the hidden temporary files ``atomic_path`` is
    writing beside them (``.<name>.<random>.json``, which another process renames or removes at any time)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith(".")) if folder.is_dir() else []


def read_records(folder: Path, pattern: str = "*.json") -> list[Any]:
    """``read_json`` of every ``json_records(folder, pattern)``, skipping one that another process removed
    between the listing and the read (a cleared failure record)."""
    out = []
    for p in json_records(folder, pattern):
        try:
            out.append(read_json(p))
        except FileNotFoundError:
            continue
    return out


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` (mode 0644), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def lock_descriptor(lock: Path) -> Iterator[int]:
    """An open descriptor of ``lock`` to ``flock``: opened read-write (created, mode 0o666 less the umask, if
    missing) — NFS emulates ``flock`` with byte-range locks, which need a descriptor open for writing — and,
    where the file is not ours to write (another user of a shared local results folder created it, 0644),
    read-only: a local ``flock`` needs no write access."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(lock, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively (a blocking ``flock``) inside the block; the folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_descriptor(path.with_suffix(".lock")) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def write_with(path: Path, write: Callable[[Path], object]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """JSON, atomically; NaN is refused rather than written."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False), encoding="utf-8")


def write_csv(path: Path, frame) -> None:
    """A pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def file_digest(path: Path) -> str:
    """blake2b-128 of a file's bytes (hex): the fast content check of a stage's files (``--verify``)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_npy(path: Path, *, mmap: bool = False):
    """A ``.npy`` array (never pickled objects); a damaged file is a ``StoreError`` that names it."""
    import numpy as np

    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = "no .npy header" if "pickle" in str(e) else str(e).splitlines()[0]
        raise StoreError(
            f"{path} is not a readable numpy array ({why}); it is damaged — delete its stage folder "
            "(the stage is then rebuilt) or restore it"
        ) from None
