"""Logging for a command: monobench's level and the libraries' verbosity, set through each library's own
API inside ``logging_at`` and restored on exit (nothing global outlives the command).

At any level but ``debug`` the libraries log errors only and their deprecation warnings that a user
cannot act on (transformers' ``past_key_values`` rename, the ``is_gradient_checkpointing`` rename TRL and
PEFT read) are not shown; ``--log-level debug`` shows everything again.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LEVELS = ("debug", "info", "warning", "error")
LIBRARIES = (
    "transformers",
    "datasets",
    "sae_lens",
    "trl",
    "peft",
    "accelerate",
    "huggingface_hub",
    "httpx",
    "httpcore",
    "sentence_transformers",
    "urllib3",
    "filelock",
)
DEPRECATIONS = (
    r".*`past_key_values` is deprecated.*",
    r".*is_gradient_checkpointing.*",
    r".*You are importing from 'trl.experimental'.*",
)
"""Library warnings about library internals (not about monobench's use), silenced below debug."""


@contextlib.contextmanager
def logging_at(level: str) -> Iterator[None]:
    """Log monobench at ``level`` (to stderr); libraries at ``level`` under debug/info, else errors only."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    lib_level = logging.DEBUG if level == "debug" else logging.ERROR
    saved = {name: logging.getLogger(name).level for name in ("bench", "saes", "tasks", *LIBRARIES)}
    saved_root = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("bench", "saes", "tasks"):
        logging.getLogger(name).setLevel(level.upper())
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(lib_level)
    restore = _library_verbosity(lib_level)
    try:
        with warnings.catch_warnings():
            if level != "debug":
                for pattern in DEPRECATIONS:
                    warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        restore()
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)


def _library_verbosity(level: int):
    """Set transformers' and datasets' own verbosity; returns a function that restores it."""
    from datasets.utils import logging as dl
    from transformers.utils import logging as tl

    old_tl, old_dl = tl.get_verbosity(), dl.get_verbosity()
    tl.set_verbosity(level)
    dl.set_verbosity(level)

    def restore() -> None:
        tl.set_verbosity(old_tl)
        dl.set_verbosity(old_dl)

    return restore
