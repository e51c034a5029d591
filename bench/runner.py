"""Suite runner: a scheduler over the planned stages of every job (``bench/plan.py``, ``bench/stages/``).

For each job in order it builds the stages the store lacks (``Stage.run`` into a temporary folder that
becomes ``runs/<key>`` when it finished), writes the job record and refreshes the manifest, and at the end
renders the leaderboard. Models live in a ``ModelPool``. Under a multi-process launcher (``bench/dist.py``)
rank 0 decides which stages are missing; every rank runs the stages marked ``every_rank`` (training) and
only rank 0 runs the others and writes to the store.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import __version__, dist
from bench.config import SuiteConfig
from bench.core.compat import hub_offline
from bench.core.errors import NumericalError
from bench.leaderboard import write_leaderboard
from bench.manifest import machine, write_manifest
from bench.models import resolve_device
from bench.plan import Plan, dry_run_lines, expand_jobs, plan_job, select_shard
from bench.plan_checks import check_model_fits
from bench.pool import ModelPool
from bench.progress import Overview
from bench.schedule import Schedule, longest_first, queue_from_env
from bench.stages import STAGES, StageContext
from bench.store import StageBusy, Store, record_name

log = logging.getLogger(__name__)


class Runner:
    """Runs planned jobs, loading models only when a stage must be computed."""

    def __init__(
        self, suite: SuiteConfig, store: Store, *, device: str = "auto", force: bool = False, progress: bool = True
    ):
        self.suite, self.store, self.force, self.progress = suite, store, force, progress
        self.pool = ModelPool(suite, store, device)
        self._partial: dict[str, dict[str, bool]] = {}
        """Job id → what ``run_job`` built of it before a busy stage stopped it."""

    def n_layers(self, seed: int) -> int:
        return self.pool.n_layers(seed)

    def complete(self, name: str, key: str) -> bool:
        """A finished stage whose files later stages need are present."""
        return self.store.done(key) and STAGES[name].complete(self.store.path(key))

    def needed(self, plan: Plan) -> set[str]:
        """The job's stages to build: those without a sound record (or forced), and upstream stages whose
        weights or activations are gone (a fresh clone of results/) but which a stage to build reads —
        directly or through its own upstream stages. A stage nobody downstream reads is never retrained."""
        need: set[str] = set()
        for planned in reversed(plan.stages):
            name, key = planned.name, planned.key
            if (self.force and key not in self.store.built) or not self.store.done(key):
                need.add(name)
            elif not STAGES[name].complete(self.store.path(key)) and need & _readers(name, plan):
                need.add(name)  # a stage to build opens its files (downstream stages come first here)
        return need

    def run_job(self, plan: Plan, on_stage=None, *, wait: bool = True) -> dict[str, bool]:
        """Run the job's missing stages; returns stage → whether it was computed (False = reused).
        ``on_stage(name)`` is called before each stage this process builds (the live overview). With
        ``wait=False`` a stage another process is building raises ``StageBusy`` (what this call built so far
        is kept and counted when the job is run again)."""
        computed = self._partial.pop(plan.job.id, {})
        need = self.needed(plan)
        for planned in plan.stages:
            stage, key = STAGES[planned.name], planned.key
            computed.setdefault(stage.name, False)
            if not dist.main_decides(stage.name in need):
                self.store.reused.append(key)
                continue
            if key in self.store.built:  # shared stage (e.g. data) already rebuilt in this run
                continue
            ctx = StageContext(plan.facts, plan.keys, self.store, self.pool, self.progress)
            if not dist.is_main():
                if stage.every_rank:
                    stage.run(ctx, self.store.tmp)
                continue
            # a second run of this job waits for the first one's stage and reuses it (one rank only: ranks
            # of a launcher must agree, so they compute what rank 0 decided)
            try:
                claim = self.store.claim(key, wait=wait) if dist.world_size() == 1 else contextlib.nullcontext()
                with claim:
                    if dist.world_size() == 1 and not self.force and self.complete(stage.name, key):
                        self.store.reused.append(key)
                        continue
                    if on_stage is not None:
                        on_stage(stage.name)
                    computed[stage.name] = self._build(stage, planned, plan, ctx)
            except StageBusy:
                self._partial[plan.job.id] = computed
                raise
        return computed

    def _build(self, stage, planned, plan: Plan, ctx: StageContext) -> bool:
        t0 = time.time()
        identity = {
            "task": plan.job.task,
            "method": plan.job.method,
            "seed": plan.job.seed,
            "stage": stage.name,
            "layer": plan.hook_layer,
            "stage_version": stage.version,
        }
        with self.store.build(planned.key, planned.spec, identity) as work:
            stage.run(ctx, work)
        log.info("%s: %s built in %.1fs", plan.job.id, stage.name, time.time() - t0)
        return True


def _readers(name: str, plan: Plan) -> set[str]:
    """Stages of ``plan`` that open ``name``'s files themselves (``Stage.reads``). One read through another
    stage is covered by ``needed``: that stage, if gone too, is needed first and then reads ``name``."""
    return {s.name for s in plan.stages if name in STAGES[s.name].reads(plan.facts)}


def _run_or_record_failure(
    runner: Runner, plan: Plan, failed: dict[str, str], echo, on_stage=None, wait: bool = True
) -> dict[str, bool] | None:
    """Run one job; a numerical fault (diverged training, collapsed activations) fails this job alone:
    recorded in ``failures/<job>.json`` and ``failed``, None returned, the other jobs still run."""
    try:
        return runner.run_job(plan, on_stage, wait=wait)
    except NumericalError as e:
        if dist.world_size() > 1:  # ranks must agree; a one-rank skip would deadlock the others
            raise
        record = {"job": plan.job.id, "model": runner.suite.model.id, "error": str(e), "error_type": type(e).__name__}
        runner.store.write_failure(record_name(runner.suite.model.id, plan.job.id), record)
        failed[plan.job.id] = str(e)
        echo(f"{plan.job.id}: FAILED — {e}")
        return None


def _run_scheduled(runner: Runner, schedule: Schedule, view: Overview, n_jobs: int, failed: dict[str, str], record):
    """Run the schedule's jobs, setting aside one whose next stage another process builds (one-rank runs
    only: ranks of a launcher must agree). ``record(plan, computed, seconds)`` follows each finished job."""
    computed: dict[str, dict[str, bool]] = {}
    started: dict[str, tuple[int, float]] = {}
    for plan, wait in iter(schedule.next, None):
        i, t0 = started.setdefault(plan.job.id, (len(started) + 1, time.time()))
        on_stage = lambda name, plan=plan, i=i: view.stage(plan.job.id, name, i, n_jobs)  # noqa: E731
        try:
            done = _run_or_record_failure(runner, plan, failed, view.echo, on_stage, wait)
        except StageBusy as busy:
            log.info("%s: another process is building %s; running another job meanwhile", plan.job.id, busy.key)
            schedule.set_aside(plan, busy.key)
            continue
        if done is not None:
            computed[plan.job.id] = done
            record(plan, done, time.time() - t0)
    return computed


@dataclass
class RunSummary:
    out: Path
    jobs: list[Plan]
    computed: dict[str, dict[str, bool]]
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)
    """Job id → the one-line reason it failed (its stages that finished are kept; it has no row)."""


def job_record(suite: SuiteConfig, plan: Plan) -> dict:
    return {
        "job": plan.job.id,
        "suite": suite.name,
        "model": suite.model.id,
        "model_identity": plan.facts.model,
        "task": plan.job.task,
        "method": plan.job.method,
        "seed": plan.job.seed,
        "hook_layer": plan.hook_layer,
        "config_hash": plan.config_hash,
        "monobench_version": __version__,
        "stages": plan.keys,
    }


def stages_to_build(plans: list[Plan], needed) -> dict[str, list[str]]:
    """Job id → the stages it will build, each stage key counted once (a shared stage goes to its first job)."""
    seen: set[str] = set()
    out = {}
    for p in plans:
        todo = needed(p)
        out[p.job.id] = [s.name for s in p.stages if s.name in todo and s.key not in seen]
        seen |= {s.key for s in p.stages}
    return out


def _summary_line(plan: Plan, computed: dict[str, bool], seconds: float) -> str:
    built = [n for n, c in computed.items() if c]
    return (
        f"{plan.job.id}: {len(built)} stage(s) built{' (' + ', '.join(built) + ')' if built else ''}, "
        f"{len(plan.stages) - len(built)} reused, {seconds:.1f}s"
    )


def _record_job(store: Store, suite: SuiteConfig, plan: Plan, runner: Runner, out, suite_file, device, seeds, shard):
    """The job's record, and the manifest refreshed (a killed run keeps provenance)."""
    name = record_name(suite.model.id, plan.job.id)
    store.clear_failure(name)
    store.write_job(name, job_record(suite, plan))
    write_manifest(out, suite, suite_file, device=device, seeds=seeds or suite.seeds, shard=shard, runner=runner)


def run_suite(
    suite: SuiteConfig,
    out: Path,
    *,
    seeds: list[int] | None = None,
    device: str = "auto",
    force: bool = False,
    shard: tuple[int, int] = (1, 1),
    dry_run: bool = False,
    verify: bool = False,
    suite_file: Path | None = None,
    progress: bool = True,
    echo=print,
) -> RunSummary:
    """Run (or, with ``dry_run``, list) a suite's jobs into ``out``; returns what was computed."""

    start = time.time()
    if not suite.needs_hub():
        hub_offline()
    if not dry_run:
        dist.init(device)
    main = dist.is_main()
    echo = echo if main else (lambda *_: None)
    store = Store(out, machine=machine(device), verify=verify)
    runner = Runner(suite, store, device=device, force=force, progress=progress)
    dev = resolve_device(device).type
    queue = queue_from_env() if dist.world_size() == 1 else None  # a --workers launch: claim jobs from it
    jobs = expand_jobs(suite, seeds) if queue else select_shard(expand_jobs(suite, seeds), shard)
    plans = [plan_job(suite, store, j, runner.n_layers(j.seed), dev) for j in jobs]
    if plans:
        check_model_fits(suite, {p.hook_layer for p in plans}, runner.pool.base(plans[0].job.seed)[0])
    if dry_run:
        for line in dry_run_lines(plans, runner.needed):
            echo(line)
        return RunSummary(out, plans, {}, 0.0)
    if main:
        store.clean_tmp()
    failed: dict[str, str] = {}
    view = Overview(
        f"suite {suite.name}", stages_to_build(plans, runner.needed), store.runs, enabled=progress and main, echo=echo
    )

    def record(plan: Plan, done: dict[str, bool], seconds: float) -> None:
        if main:
            _record_job(store, suite, plan, runner, out, suite_file, device, seeds, shard)
            view.job_done(plan.job.id, _summary_line(plan, done, seconds))

    schedule = Schedule(longest_first(plans) if queue else plans, queue, store.claimed_elsewhere)
    try:
        computed = _run_scheduled(runner, schedule, view, len(plans), failed, record)
    finally:
        view.close()
    if main:
        write_manifest(out, suite, suite_file, device=device, seeds=seeds or suite.seeds, shard=shard, runner=runner)
        write_leaderboard(out)
    ran = [p for p in plans if p.job.id in computed or p.job.id in failed] if queue else plans
    return RunSummary(out, ran, computed, time.time() - start, failed)
