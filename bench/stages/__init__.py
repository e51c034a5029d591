"""The stages of a job (SPEC.md §1), one module each; importing the package registers them all.

    data → train → eval      (task scorer + held-out preference metrics)
                 → proxies   (neuron proxies, every layer)
                 → acts → sae

``ordered()`` gives them in dependency order (every stage after the stages it needs).
"""

import importlib
import pkgutil

from bench.core.registry import Registry
from bench.stages._base import Job, JobFacts, Stage, StageContext

STAGES: Registry[Stage] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    STAGES.add(cls.name, cls())
    return cls


for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def ordered() -> list[Stage]:
    """Registered stages, each after every stage it needs (by ``order`` among the rest)."""
    done: list[Stage] = []
    todo = sorted(STAGES.values(), key=lambda s: s.order)
    while todo:
        ready = [s for s in todo if all(n in {d.name for d in done} for n in s.needs)]
        if not ready:
            raise ValueError(f"stages {[s.name for s in todo]} need stages that are not registered or form a cycle")
        done.append(ready[0])
        todo.remove(ready[0])
    return done


__all__ = ["STAGES", "Job", "JobFacts", "Stage", "StageContext", "ordered", "register_stage"]
