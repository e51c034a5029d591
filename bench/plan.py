"""Plan a suite without computing anything: its jobs (task × method × seed), shards and stage keys.

A stage key is a hash of everything that determines the stage (``bench/store.py``), so a plan says
which stages are already in a results folder (``--dry-run``) and which the runner must compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench import __version__
from bench.config import SuiteConfig
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
    methods = sorted(suite.methods, key=lambda m: (m != "base", list(suite.methods).index(m)))
    return [Job(t, m, s) for s in (seeds or suite.seeds) for t in suite.tasks for m in methods]


def select_shard(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """Jobs of shard I of N: every N-th job starting at I−1 (deterministic, covers all jobs once)."""
    i, n = shard
    if not 1 <= i <= n:
        raise ValueError(f"--shard {i}/{n}: I must be in 1..N")
    return [j for k, j in enumerate(jobs) if k % n == i - 1]


def model_identity(suite: SuiteConfig, seed: int) -> dict[str, Any]:
    m = suite.model
    ident: dict[str, Any] = {"id": m.id}
    if m.id.startswith("tiny:"):
        ident |= {"tiny": m.tiny.model_dump(), "seed": seed}  # a tiny model is its seed
    return ident


def plan_job(suite: SuiteConfig, store: Store, job: Job, n_model_layers: int) -> Plan:
    """Stage keys of one job (no computation), for running and for --dry-run."""
    from bench.lm import resolve_layer
    from tasks import TASKS

    plan = Plan(job=job)
    model = model_identity(suite, job.seed)
    layer = resolve_layer(suite.hook.layer, n_model_layers)
    plan.hook_layer = layer
    hook = {"module": suite.hook.module, "layer": layer}
    task_cfg = suite.tasks[job.task].model_dump(mode="json")
    method_cfg = suite.methods[job.method].model_dump(mode="json")

    def add(name: str, spec: dict[str, Any]) -> str:
        key = store.key(name, spec)
        plan.stages[name] = (key, spec)
        return key

    data = add("data", {"task": job.task, "task_version": TASKS[job.task].version, "task_cfg": task_cfg,
                        "model": model, "seed": job.seed})
    if job.method == "base":
        policy = "base-" + stable_hash(model)
    else:
        policy = add("train", {"method": job.method, "method_cfg": method_cfg, "data": data, "model": model,
                               "hook": hook, "seed": job.seed, "curve_inputs": PROXY_INPUTS})
    add("eval", {"policy": policy, "data": data, "task_cfg": task_cfg, "eval": suite.eval.model_dump()})
    add("proxies", {"policy": policy, "data": data, "proxies": suite.proxies.model_dump(),
                    "module": suite.hook.module, "inputs": PROXY_INPUTS})
    if suite.sae is not None:
        sae_cfg = suite.sae.model_dump(mode="json")
        acts = add("acts", {"policy": policy, "data": data, "hook": hook, "sae": sae_cfg, "seed": job.seed})
        add("sae", {"acts": acts, "sae": sae_cfg, "seed": job.seed})
    plan.config_hash = stable_hash({"model": model, "task": task_cfg, "method": method_cfg, "hook": hook,
                                    "proxies": suite.proxies.model_dump(), "eval": suite.eval.model_dump(),
                                    "sae": suite.sae.model_dump(mode="json") if suite.sae else None,
                                    "seed": job.seed, "version": __version__}, n=12)
    return plan


def dry_run_lines(suite: SuiteConfig, store: Store, plans: list[Plan]) -> list[str]:
    """One line per job: its stages, each marked cached or to run."""
    lines = []
    for p in plans:
        parts = [f"{n}:{'cached' if store.done(k) else 'run'}" for n, (k, _) in p.stages.items()]
        lines.append(f"{p.job.id:<34} layer {p.hook_layer:<3} " + " ".join(parts))
    return lines
