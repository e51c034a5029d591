"""Content identity of a job's inputs: what a stage key holds about the model and the data files.

A stage key must change when its inputs change, including in place: so a local model folder is
identified by a hash of its weights, config and tokenizer files, an embedded model by a hash of its
packaged GGUF file, a local data file by a hash of its bytes. Hashes are computed once per file and
cached by (absolute path, size, modification time) in ``<monobench cache>/file-hashes.json``, so a
plan costs a stat per file after the first run.

Example::

    python -c "from bench.identity import file_sha256; print(file_sha256('pyproject.toml'))"
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from bench.core.errors import ModelLoadError
from bench.core.io import cache_dir, write_text
from bench.models import HUB_TIMEOUT_S, embedded_gguf
from tasks.sources import hf_source

log = logging.getLogger(__name__)

MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf", ".tiktoken")


def _cache_file() -> Path:

    return cache_dir() / "file-hashes.json"


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    path = _cache_file()
    try:
        write_text(path, json.dumps(cache))
    except OSError:  # a read-only cache only costs a re-hash next time
        pass


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), cached by absolute path, size and mtime."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
    cache = _load_cache()
    if key not in cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
        _save_cache(cache)
    return cache[key]


def folder_sha256(folder: str | Path) -> str:
    """sha256 over (relative name, file hash) of a model folder's weight, config and tokenizer files."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
    if not files:
        raise ModelLoadError(f"model folder {root} holds no weight, config or tokenizer files")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def model_identity(
    model_id: str, *, revision: str | None = None, tiny: dict[str, Any] | None = None, seed: int = 0
) -> dict[str, Any]:
    """What identifies a model spec's weights: the embedded GGUF's hash, a local folder's content hash, a
    hub id with its revision, or a tiny model's shape, seed and how the seed draws its weights (a tiny model
    is its seed; ``init`` names ``bench.models.tiny_init_seed``, so tiny stages built before it are not reused)."""
    if model_id.startswith("tiny:"):
        return {"id": model_id, "tiny": tiny or {}, "seed": seed, "init": "sha256-seed"}
    if model_id.startswith("embedded:"):
        folder, filename = embedded_gguf(model_id.split(":", 1)[1])
        return {"id": model_id, "gguf_sha256": file_sha256(folder / filename)}
    path = Path(model_id).expanduser()
    if path.is_dir():
        return {"id": model_id, "content_sha256": folder_sha256(path)}
    return {"id": model_id, "revision": revision or "main", "commit": resolve_revision(model_id, revision)}


@functools.cache
def resolve_revision(repo_id: str, revision: str | None, kind: str = "model") -> str | None:
    """The commit hash a hub branch/tag names now (``HfApi().model_info`` / ``dataset_info``), or None when the
    hub is offline or unreachable — then the key holds the revision as written, and a moved branch is not
    seen (pin a commit to be safe). A 40-hex revision is a commit already."""
    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        info = getattr(HfApi(), f"{kind}_info")(repo_id, revision=rev, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 — network and hub errors all mean "not resolved here"
        log.warning(
            "cannot resolve %s %s@%s to a commit (%s); keying it by the revision as written", kind, repo_id, rev, e
        )
        return None
    return info.sha


def source_identity(source: str) -> dict[str, Any]:
    """A task source's content: a local file's hash; a hub dataset ``hf:<id>[:split][@revision]`` its revision
    and resolved commit; the embedded source is named as it is (its package version is in the task version)."""
    if source.startswith("hf:"):
        ds_id, _, rev = hf_source(source)
        return {"revision": rev or "main", "commit": resolve_revision(ds_id, rev, "dataset")}
    path = Path(source).expanduser()
    if source != "embedded" and not source.startswith("hf:") and path.is_file():
        return {"source_sha256": file_sha256(path)}
    return {}
