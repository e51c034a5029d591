"""Suite runner: run each planned job's stages (``bench/plan.py`` expands a suite into jobs and keys).

Stages, each a cached folder in the store (``bench/store.py``), keyed by what determines it:

    data (task, base model, seed) → train (method) → eval (task scorer + held-out preference metrics)
                                                    → proxies (neuron proxies, every layer)
                                                    → acts (activation store at the hook) → sae

Every stage folder has a ``metrics.json`` of tidy records ``{metric, value, layer?, sae?}`` that
``bench/leaderboard.py`` turns into the CSVs without knowing any metric by name.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import __version__, dist
from bench.config import SuiteConfig
from bench.plan import Plan, dry_run_lines, expand_jobs, plan_job, select_shard
from bench.store import Store, read_json, write_json
from bench.methods import METHODS
from tasks._base import proxy_pairs, sae_documents

log = logging.getLogger(__name__)


def records(metrics: dict[str, float], **extra: Any) -> list[dict[str, Any]]:
    """Flat {metric: value} → tidy records (with optional layer / sae fields).

    A non-finite value is not written (its cell stays empty) and is logged as a warning: the
    leaderboard never carries a NaN that looks like a number.
    """
    out = []
    for k, v in metrics.items():
        if v is None or not math.isfinite(float(v)):
            log.warning("metric %s is undefined (%s) for this stage; left empty", k, v)
            continue
        out.append({"metric": k, "value": float(v), **extra})
    return out


def regulariser_share(curves: list[dict[str, float]], lam: float | None) -> float | None:
    """Mean over logged training windows of λ·penalty / loss: the share of the DecPO/L1 loss that is the
    regulariser (the logged loss includes it). None for methods without a penalty."""
    rows = [(r[k], r["trainer/loss"]) for r in curves for k in ("trainer/reg/decor", "trainer/reg/l1")
            if k in r and r.get("trainer/loss")]
    if lam is None or not rows:
        return None
    return sum(lam * reg / loss for reg, loss in rows) / len(rows)


class Runner:
    """Runs planned jobs, loading the base model and policies only when a stage must be computed."""

    def __init__(self, suite: SuiteConfig, store: Store, *, device: str = "auto", force: bool = False,
                 progress: bool = True):
        self.suite, self.store, self.device, self.force, self.progress = suite, store, device, force, progress
        self._base: dict[int, tuple[Any, Any]] = {}
        self._policy_cache: tuple[str, Any] | None = None
        self._reference_logps: dict[str, Any] = {}

    # ----- models -------------------------------------------------------------------------------
    def base(self, seed: int):
        """(model, tokenizer) of the suite's base model, loaded once per seed (tiny models depend on it)."""
        from bench.models import load_model

        key = seed if self.suite.model.id.startswith("tiny:") else 0
        if key not in self._base:
            self._base[key] = load_model(self.suite.model.id, seed=seed, device=self.device,
                                         tiny=self.suite.model.tiny.spec())
        return self._base[key]

    def n_layers(self, seed: int) -> int:
        """Depth of the base model without loading weights when a config is enough."""
        m = self.suite.model
        if m.id.startswith("tiny:"):
            return m.tiny.n_layers
        from bench.lm import n_layers

        return n_layers(self.base(seed)[0])

    def policy(self, plan: Plan):
        """The job's policy: the base model, or base + the trained adapter/weights from the train stage.

        A LoRA adapter is folded into the weights (W + (α/r)·BA, ``merge_and_unload``): the trained
        function up to float rounding, without LoRA's extra matmuls (~1.3× faster forwards on CPU).
        """
        model, tok = self.base(plan.job.seed)
        kind = METHODS[plan.job.method].policy
        if kind == "base":
            return model, tok
        key = plan.stages["train"][0] if kind == "trained" else f"random_init-{plan.job.seed}"
        if self._policy_cache and self._policy_cache[0] == key:
            return self._policy_cache[1], tok
        if kind == "random_init":
            from bench.models import random_init

            self._policy_cache = (key, random_init(model, plan.job.seed))
            return self._policy_cache[1], tok
        from bench.align import load_policy

        self._policy_cache = None
        pol = load_policy(copy.deepcopy(model), self.store.path(key) / "policy")
        if hasattr(pol, "merge_and_unload"):
            pol = pol.merge_and_unload()
        pol.eval()
        self._policy_cache = (key, pol)
        return pol, tok

    # ----- stages -------------------------------------------------------------------------------
    def run_job(self, plan: Plan) -> dict[str, bool]:
        """Run the job's missing stages; returns stage → whether it was computed (False = reused).

        Under a multi-process launcher (``bench/dist.py``) rank 0 decides which stages are missing; every
        rank trains, and only rank 0 computes the other stages and writes to the store.
        """
        computed: dict[str, bool] = {}
        for name, (key, spec) in plan.stages.items():
            needed = not self._complete(name, key) or (self.force and key not in self.store.built)
            if not dist.main_decides(needed):
                self.store.reused.append(key)
                computed[name] = False
                continue
            if key in self.store.built:  # shared stage (e.g. data) already rebuilt in this run
                computed[name] = False
                continue
            if not dist.is_main():  # rank > 0: take part in training, write nothing
                if name == "train":
                    self.store.tmp.mkdir(parents=True, exist_ok=True)
                    with tempfile.TemporaryDirectory(prefix=f"{key}.{os.getpid()}.", dir=self.store.tmp) as scratch:
                        self._stage_train(plan, Path(scratch))
                computed[name] = False
                continue
            t0 = time.time()
            identity = {"task": plan.job.task, "method": plan.job.method, "seed": plan.job.seed, "stage": name}
            with self.store.build(key, spec, identity) as work:
                getattr(self, f"_stage_{name}")(plan, work)
            computed[name] = True
            log.info("%s: %s built in %.1fs", plan.job.id, name, time.time() - t0)
        return computed

    def _complete(self, name: str, key: str) -> bool:
        """A finished stage whose artifacts downstream stages need are present.

        Committed reference results keep only the small records of a stage (weights and activations
        are not in git), so a train stage without its policy counts as missing and is rebuilt.
        """
        if not self.store.done(key):
            return False
        if name == "train":
            return (self.store.path(key) / "policy" / "monobench_policy.json").is_file()
        return True

    def _chat(self, plan: Plan) -> bool:
        """Whether prompts of this job go through the chat template (the task's ``use_chat_template``)."""
        return self.suite.tasks[plan.job.task].use_chat_template

    def _data(self, plan: Plan):
        from tasks import TaskData

        return TaskData.model_validate(read_json(self.store.path(plan.stages["data"][0]) / "data.json"))

    def _stage_data(self, plan: Plan, work: Path) -> None:
        from tasks import TASKS

        model, tok = self.base(plan.job.seed)
        task = TASKS[plan.job.task]()
        torch.manual_seed(plan.job.seed)
        data = task.build(self.suite.tasks[plan.job.task], model, tok, plan.job.seed)
        write_json(work / "data.json", data.model_dump(mode="json"))
        write_json(work / "metrics.json", records({"n_train_pairs": len(data.train_pairs),
                                                   "n_eval_pairs": len(data.eval_pairs),
                                                   "n_eval_prompts": len(data.eval_prompts)}))

    def _stage_train(self, plan: Plan, work: Path) -> None:
        import pandas as pd

        from bench.align import save_policy, train_policy

        model, tok = self.base(plan.job.seed)
        data = self._data(plan)
        res = train_policy(plan.job.method, self.suite.methods[plan.job.method], model, tok, data.train_pairs,
                           data.eval_pairs, work / "trainer", plan.job.seed,
                           use_chat_template=self._chat(plan), layer=plan.hook_layer,
                           hook=self.suite.hook.module, eval_beta=self.suite.eval.beta,
                           proxy_pairs=proxy_pairs(data, self.suite.proxies.n_texts), progress=self.progress)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        save_policy(res.policy, work / "policy")
        cfg = self.suite.methods[plan.job.method]
        write_json(work / "train.json", {"processes": dist.world_size(), "global_batch_size": cfg.batch_size,
                                         "per_process_batch_size": cfg.batch_size // dist.world_size()})
        pd.DataFrame(res.curves).to_csv(work / "curves.csv", index=False)
        metrics = {"train_steps": res.steps, "train_seconds": res.seconds}
        if (share := regulariser_share(res.curves, getattr(cfg, "lam", None))) is not None:
            metrics["train_reg_share"] = share
        write_json(work / "metrics.json", records(metrics))
        self._policy_cache = None

    def _stage_eval(self, plan: Plan, work: Path) -> None:
        from tasks import TASKS, pair_logprobs, preference_metrics

        data = self._data(plan)
        pol, tok = self.policy(plan)
        torch.manual_seed(plan.job.seed)
        kw = dict(batch_size=self.suite.eval.batch_size, use_chat_template=self._chat(plan))
        pol_logps = pair_logprobs(pol, tok, data.eval_pairs, **kw)   # shared by the scorer and the preference metrics
        metrics = TASKS[plan.job.task]().score(self.suite.tasks[plan.job.task], pol, tok, data, pair_logps=pol_logps)
        # The reference is the base model: its log-probs are the base row's own, shared by the task's methods.
        # The base row itself has no preference metrics: against itself they are 0.5 and 0 by definition.
        data_key = plan.stages["data"][0]
        if METHODS[plan.job.method].policy == "base":
            self._reference_logps = {data_key: pol_logps}
        else:
            if data_key not in self._reference_logps:
                self._reference_logps = {data_key: pair_logprobs(self.base(plan.job.seed)[0], tok, data.eval_pairs,
                                                                 **kw)}
            metrics |= preference_metrics(pol, tok, data.eval_pairs, beta=self.suite.eval.beta, policy_logps=pol_logps,
                                          reference_logps=self._reference_logps[data_key], **kw)
        write_json(work / "metrics.json", records(metrics))

    def _stage_proxies(self, plan: Plan, work: Path) -> None:
        from bench.proxies import model_proxies

        data = self._data(plan)
        pol, tok = self.policy(plan)
        cfg = self.suite.proxies
        pairs = proxy_pairs(data, cfg.n_texts)
        kw = dict(hook=self.suite.hook.module, batch_size=cfg.batch_size, max_length=cfg.max_length,
                  use_chat_template=self._chat(plan))
        rows = model_proxies(pol, tok, [p.prompt for p in pairs], replies=[p.chosen for p in pairs], **kw)
        prompt_only = model_proxies(pol, tok, [p.prompt for p in pairs], **kw)  # the paper's read-out
        recs = []
        for row, prow in zip(rows, prompt_only):
            layer = row.pop("layer")
            row.pop("rel_depth")
            recs += records(row | {"decorrelation_prompt": prow["decorrelation"]}, layer=layer)
        for name in ("decorrelation", "act_variance", "mono_scale", "decor_loss"):
            recs += records({f"{name}_mean": sum(r[name] for r in rows) / len(rows)})
        recs += records({"decorrelation_prompt_mean": sum(r["decorrelation"] for r in prompt_only) / len(rows)})
        write_json(work / "metrics.json", recs)
        if METHODS[plan.job.method].trains:  # the paper's Table 1: most changed neurons at the hook layer
            from bench.proxies import most_changed_neurons

            try:
                top = most_changed_neurons(self.base(plan.job.seed)[0], pol, tok, plan.hook_layer,
                                           hook=self.suite.hook.module)
            except ValueError as e:
                log.warning("no top-token table for %s: %s", plan.job.id, e)
            else:
                write_json(work / "top_tokens.json", top)

    def _stage_acts(self, plan: Plan, work: Path) -> None:
        from saes.activations import collect_activations

        data = self._data(plan)
        pol, tok = self.policy(plan)
        cfg = self.suite.sae
        texts, groups = sae_documents(data)
        collect_activations(pol, tok, texts, groups=groups, layer=plan.hook_layer, hook=self.suite.hook.module,
                            out_dir=work, cfg=cfg, seed=plan.job.seed)
        from saes.activations import ActivationStore
        from saes.heldout import audit_store

        store = ActivationStore(work)
        audit = audit_store(store)
        if audit["leaks"] or audit["twins"]:
            raise RuntimeError(f"activation store {work.name}: {audit['leaks']} held-out tokens share a 4+-token "
                               f"prefix with training and {audit['twins']} are twins; this is a bug")
        m = store.manifest
        write_json(work / "metrics.json", records({
            "acts_n_train_tokens": m["n_train_tokens"], "acts_n_heldout_tokens": m["n_heldout_tokens"],
            "acts_n_duplicate_tokens": m["n_duplicate_tokens"], "acts_heldout_leaks": audit["leaks"],
            "acts_heldout_twins": audit["twins"]}))

    def _stage_sae(self, plan: Plan, work: Path) -> None:
        from saes.score import score_sae
        from saes.train import train_sae
        from tasks import TASKS

        data = self._data(plan)
        pol, tok = self.policy(plan)
        acts = self.store.path(plan.stages["acts"][0])
        sae_dir = train_sae(acts, self.suite.sae, work / "sae", seed=plan.job.seed, device=str(
            next(pol.parameters()).device))
        metrics = score_sae(sae_dir, acts, pol, tok, layer=plan.hook_layer, hook=self.suite.hook.module,
                            concept_texts=data.concept_texts, concept_labels=data.concept_labels,
                            concept_groups=TASKS[plan.job.task]().concept_groups(data), cfg=self.suite.sae,
                            out_dir=work, seed=plan.job.seed, embed_cache_dir=self.store.out / "cache" / "context-embeddings")
        write_json(work / "metrics.json", records(metrics, layer=plan.hook_layer,
                                                  sae=self.suite.sae.architecture))


@dataclass
class RunSummary:
    out: Path
    jobs: list[Plan]
    computed: dict[str, dict[str, bool]]
    seconds: float


def run_suite(suite: SuiteConfig, out: Path, *, seeds: list[int] | None = None, device: str = "auto",
              force: bool = False, shard: tuple[int, int] = (1, 1), dry_run: bool = False,
              suite_file: Path | None = None, progress: bool = True, echo=print) -> RunSummary:
    """Run (or, with ``dry_run``, list) a suite's jobs into ``out``; returns what was computed."""
    from bench.leaderboard import write_leaderboard
    from bench.manifest import write_manifest

    start = time.time()
    if not dry_run:
        dist.init(device)
    main = dist.is_main()
    echo = echo if main else (lambda *_: None)
    store = Store(out)
    runner = Runner(suite, store, device=device, force=force, progress=progress)
    jobs = select_shard(expand_jobs(suite, seeds), shard)
    plans = [plan_job(suite, store, j, runner.n_layers(j.seed)) for j in jobs]
    if dry_run:
        for line in dry_run_lines(suite, store, plans):
            echo(line)
        return RunSummary(out, plans, {}, 0.0)
    if main:
        store.clean_tmp()
    computed: dict[str, dict[str, bool]] = {}
    from tqdm.auto import tqdm

    for plan in tqdm(plans, desc=f"suite {suite.name}", disable=not (progress and main), unit="job"):
        t0 = time.time()
        computed[plan.job.id] = runner.run_job(plan)
        if not main:
            continue
        store.write_job(plan.job.id, {
            "job": plan.job.id, "suite": suite.name, "model": suite.model.id, "task": plan.job.task,
            "method": plan.job.method, "seed": plan.job.seed, "hook_layer": plan.hook_layer,
            "config_hash": plan.config_hash, "monobench_version": __version__,
            "stages": {n: k for n, (k, _) in plan.stages.items()}})
        # the manifest is refreshed after every job, so a run killed half way still has provenance
        write_manifest(out, suite, suite_file, device=device, seeds=seeds or suite.seeds, shard=shard,
                       runner=runner)
        built = [n for n, c in computed[plan.job.id].items() if c]
        echo(f"{plan.job.id}: {len(built)} stage(s) built{' (' + ', '.join(built) + ')' if built else ''}, "
             f"{len(plan.stages) - len(built)} reused, {time.time() - t0:.1f}s")
    if not main:
        return RunSummary(out, plans, computed, time.time() - start)
    write_manifest(out, suite, suite_file, device=device, seeds=seeds or suite.seeds, shard=shard,
                   runner=runner)
    write_leaderboard(out)
    return RunSummary(out, plans, computed, time.time() - start)
