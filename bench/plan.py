"""Plan a suite without computing anything: its jobs (task × method × seed), shards and stage keys.

A stage key is a hash of everything that determines the stage (``bench/store.py``), so a plan says
which stages are already in a results folder (``--dry-run``) and which the runner must compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.config import SuiteConfig
from bench.identity import model_identity, source_identity
from bench.store import Store, stable_hash
from tasks._base import PROXY_INPUTS


@dataclass(frozen=True)
class Job:
    task: str
    method: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}__{self.method}__s{self.seed}"


@dataclass
class Plan:
    """A job's stages in execution order: name → (key, spec)."""

    job: Job
    stages: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    hook_layer: int = 0
    config_hash: str = ""


def expand_jobs(suite: SuiteConfig, seeds: list[int] | None = None) -> list[Job]:
    """All jobs in a fixed order: seed, then task, then method (base first) as written in the suite."""
    methods = sorted(suite.methods, key=lambda m: (m != "base", list(suite.methods).index(m)))  # base first
    return [Job(t, m, s) for s in (seeds or suite.seeds) for t in suite.tasks for m in methods]


def select_shard(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """Jobs of shard I of N: every N-th job starting at I−1 (deterministic, covers all jobs once)."""
    i, n = shard
    if not 1 <= i <= n:
        raise ValueError(f"--shard {i}/{n}: I must be in 1..N")
    return [j for k, j in enumerate(jobs) if k % n == i - 1]


STAGE_VERSIONS = {"data": "2", "train": "2", "eval": "2", "proxies": "2", "acts": "2", "sae": "2"}
"""Version of the code that computes each stage; part of its key. Bump it with any change of a stage's
definition or numbers (``tests/test_golden.py`` fails when a stage's numbers change without a bump)."""


def job_model_identity(suite: SuiteConfig, seed: int) -> dict[str, Any]:
    m = suite.model
    return model_identity(m.id, tiny=m.tiny.model_dump() if m.id.startswith("tiny:") else None, seed=seed)


def job_layer(suite: SuiteConfig, method: str, n_model_layers: int) -> int:
    """The layer a job regularises and reads: the method's ``layer`` if it sets one, else the suite's hook."""
    from bench.lm import resolve_layer

    own = getattr(suite.methods[method], "layer", None)
    return resolve_layer(own if own is not None else suite.hook.layer, n_model_layers)


def plan_job(suite: SuiteConfig, store: Store, job: Job, n_model_layers: int) -> Plan:
    """Stage keys of one job (no computation), for running and for --dry-run."""
    from bench.lm import READOUT
    from bench.methods import METHODS
    from tasks import TASKS

    plan = Plan(job=job)
    model = job_model_identity(suite, job.seed)
    plan.hook_layer = layer = job_layer(suite, job.method, n_model_layers)
    hook = {"module": suite.hook.module, "layer": layer}
    task_cfg = suite.tasks[job.task].model_dump(mode="json")
    method_cfg = suite.methods[job.method].model_dump(mode="json")
    kind = METHODS[job.method].policy

    def add(name: str, spec: dict[str, Any]) -> str:
        key = store.key(name, spec, STAGE_VERSIONS[name])
        plan.stages[name] = (key, spec)
        return key

    data = add("data", {"task": job.task, "task_version": TASKS[job.task].version, "task_cfg": task_cfg,
                        "model": model, "seed": job.seed, "source": source_identity(task_cfg["source"])})
    if kind == "base":
        policy = "base-" + stable_hash(model)
    elif kind == "random_init":
        policy = "random_init-" + stable_hash({"model": model, "seed": job.seed})
    else:
        policy = add("train", {"method": job.method, "method_cfg": method_cfg, "data": data, "model": model,
                               "hook": hook, "seed": job.seed, "readout": READOUT})
    if METHODS[job.method].evaluates:
        add("eval", {"policy": policy, "data": data, "task_cfg": task_cfg, "eval": suite.eval.model_dump()})
    add("proxies", {"policy": policy, "data": data, "proxies": suite.proxies.model_dump(),
                    "module": suite.hook.module, "inputs": PROXY_INPUTS, "readout": READOUT})
    if suite.sae is not None:
        sae_cfg = suite.sae.model_dump(mode="json")
        acts = add("acts", {"policy": policy, "data": data, "hook": hook, "sae": sae_cfg, "seed": job.seed})
        add("sae", {"acts": acts, "sae": sae_cfg, "seed": job.seed})
    plan.config_hash = stable_hash(sorted(k for k, _ in plan.stages.values()), n=12)
    return plan


def dry_run_lines(suite: SuiteConfig, store: Store, plans: list[Plan]) -> list[str]:
    """One line per job: its stages, each marked cached or to run."""
    lines = []
    for p in plans:
        parts = [f"{n}:{'cached' if store.done(k) else 'run'}" for n, (k, _) in p.stages.items()]
        lines.append(f"{p.job.id:<34} layer {p.hook_layer:<3} " + " ".join(parts))
    return lines
