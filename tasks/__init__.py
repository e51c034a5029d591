"""Preference tasks (SPEC.md §3). Importing the package registers every task module in it."""

import importlib
import pkgutil

from bench.core.task import TASKS, Pair, Task, TaskConfig, TaskData, register

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["TASKS", "Pair", "Task", "TaskConfig", "TaskData", "register"]
