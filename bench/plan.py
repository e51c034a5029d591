"""Plan a suite without computing anything: its jobs (task × method × seed), shards and stage keys.

A stage key is a hash of the stage's name, code version and spec (``bench.stages``), and a spec holds the
keys of the stages it needs, so a plan says which stages are already in a results folder (``--dry-run``)
and which the runner must compute. ``config_hash`` hashes a job's stage keys: it covers everything they
cover by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.config import SuiteConfig
from bench.core.io import stable_hash
from bench.core.lm import resolve_layer
from bench.identity import model_identity
from bench.stages import Job, JobFacts, ordered
from bench.store import Store

__all__ = ["Job", "Plan", "PlannedStage", "expand_jobs", "select_shard", "plan_job", "dry_run_lines"]


@dataclass(frozen=True)
class PlannedStage:
    name: str
    key: str
    spec: dict


@dataclass(frozen=True)
class Plan:
    """A job's stages in execution order."""

    facts: JobFacts
    stages: tuple[PlannedStage, ...] = field(default_factory=tuple)

    @property
    def job(self) -> Job:
        return self.facts.job

    @property
    def hook_layer(self) -> int:
        return self.facts.layer

    @property
    def keys(self) -> dict[str, str]:
        return {s.name: s.key for s in self.stages}

    @property
    def config_hash(self) -> str:
        return stable_hash(sorted(s.key for s in self.stages), n=12)


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


def job_layer(suite: SuiteConfig, method: str, n_model_layers: int) -> int:
    """The layer a job regularises and reads: the method's ``layer`` if it sets one, else the suite's hook."""

    own = getattr(suite.methods[method], "layer", None)
    return resolve_layer(own if own is not None else suite.hook.layer, n_model_layers)


def job_facts(suite: SuiteConfig, job: Job, n_model_layers: int, device: str = "cpu") -> JobFacts:
    """What a job's stage keys are made of. ``device`` is the resolved torch device type: a GPU's kernels
    round differently from the CPU's, so ``cuda`` enters the model identity (and with it every stage key
    and the shared reference log-probs' scope) and a GPU run never reuses a CPU run's stages in one folder.
    On ``cpu`` it is left out, so CPU keys are what they always were."""
    m = suite.model
    tiny = m.tiny.model_dump() if m.id.startswith("tiny:") else None
    model = model_identity(m.id, revision=m.revision, tiny=tiny, seed=job.seed)
    if device != "cpu":
        model["device"] = device
    return JobFacts(suite=suite, job=job, model=model, layer=job_layer(suite, job.method, n_model_layers))


def plan_job(suite: SuiteConfig, store: Store, job: Job, n_model_layers: int, device: str = "cpu") -> Plan:
    """Stage keys of one job (no computation), for running and for --dry-run; ``device`` as in ``job_facts``."""
    facts = job_facts(suite, job, n_model_layers, device)
    up: dict[str, str] = {}
    planned = []
    for stage in ordered():
        if not stage.applies(facts):
            continue
        spec = stage.spec(facts, up)
        up[stage.name] = key = store.key(stage.name, spec, stage.version)
        planned.append(PlannedStage(stage.name, key, spec))
    return Plan(facts, tuple(planned))


def dry_run_lines(plans: list[Plan], needed) -> list[str]:
    """One line per job: its stages, each marked cached or to run (``needed(plan)``: the runner's choice)."""
    lines = []
    for p in plans:
        todo = needed(p)
        marks = " ".join(f"{s.name}:{'run' if s.name in todo else 'cached'}" for s in p.stages)
        lines.append(f"{p.job.id:<34} layer {p.hook_layer:<3} {marks}")
    return lines
