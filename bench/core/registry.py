"""One generic registry for every extension point (tasks, methods, stages, metric sets), after
lm-evaluation-harness's ``Registry``: registration by decorator or call, duplicates refused, and a lookup
of an unknown name that lists what exists.

    TASKS: Registry[type[Task]] = Registry("task")
    @TASKS.register("toxicity")
    class Toxicity(Task): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """name → part; iterates in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            return self.add(name, item)

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items))}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)
