"""``train``: align the base model with the job's method (TRL + PEFT, ``bench.align.train_policy``)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from bench import dist
from bench.align import save_policy, train_policy
from bench.core.errors import NumericalError
from bench.core.io import write_csv, write_json
from bench.core.lm import READOUT
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.ref_logps import RefLogpsMemo
from bench.stages import JobFacts, Stage, StageContext, register_stage
from bench.texts import proxy_pairs


@register_metrics
class TrainMetrics(MetricSet):
    group = "training"
    where = "bench.stages.train"
    train_steps: float | None = metric("optimiser steps taken", better="none", unit="count")
    train_seconds: float | None = metric("wall time of training", better="lower", unit="seconds")
    train_reg_share: float | None = metric(
        "DecPO/L1: mean over logged windows of λ·penalty / training loss (how "
        "much of the objective the regulariser is)",
        better="none",
        unit="fraction",
    )


def regulariser_share(curves: list[dict[str, float]], lam: float | None) -> float | None:
    """Mean over logged training windows of λ·penalty / loss: the share of the DecPO/L1 loss that is the
    regulariser (the logged loss includes it). None for methods without a penalty."""
    rows = [
        (v, r["trainer/loss"])
        for r in curves
        for k, v in r.items()
        if k.startswith("trainer/reg/") and r.get("trainer/loss")
    ]
    if lam is None or not rows:
        return None
    return sum(lam * reg / loss for reg, loss in rows) / len(rows)


@register_stage
class TrainStage(Stage):
    name, version, order, needs, every_rank = "train", "2", 1, ("data",), True

    def applies(self, facts: JobFacts) -> bool:
        return facts.method.trains

    def spec(self, facts: JobFacts, up: dict[str, str]) -> dict[str, Any]:
        return {
            "method": facts.job.method,
            "method_cfg": facts.method_cfg,
            "data": up["data"],
            "model": facts.model,
            "hook": facts.hook,
            "seed": facts.job.seed,
            "readout": READOUT,
        }

    def complete(self, folder: Path) -> bool:
        """Committed results keep no weights: a train stage without its policy is rebuilt."""
        return (folder / "policy" / "monobench_policy.json").is_file()

    def run(self, ctx: StageContext, work: Path) -> None:
        if not dist.is_main():  # rank > 0 takes part in training and writes nothing
            ctx.store.tmp.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=ctx.store.tmp) as scratch:
                self._train(ctx, Path(scratch))
            return
        self._train(ctx, work)

    def _train(self, ctx: StageContext, work: Path) -> None:

        model, tok = ctx.base()
        data = ctx.data()
        cfg = ctx.suite.methods[ctx.job.method]
        memo = RefLogpsMemo(ctx.store.out / "memo" / "ref_logps", json.dumps(ctx.facts.model, sort_keys=True))
        res = train_policy(
            ctx.facts.method.name,
            cfg,
            model,
            tok,
            data.train_pairs,
            data.eval_pairs,
            work / "trainer",
            ctx.job.seed,
            use_chat_template=ctx.chat,
            layer=ctx.facts.layer,
            hook=ctx.suite.hook.module,
            eval_beta=ctx.suite.eval.beta,
            proxy_pairs=proxy_pairs(data, ctx.suite.proxies.n_texts),
            progress=ctx.progress,
            ref_memo=memo,
        )
        check_training_finite(res.curves, ctx.job.id)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        ctx.pool.forget_policy()
        if not dist.is_main():
            return
        save_policy(res.policy, work / "policy")
        facts: dict[str, Any] = {
            "processes": dist.world_size(),
            "global_batch_size": cfg.batch_size,
            "per_process_batch_size": cfg.batch_size // dist.world_size(),
            "layer": res.layer,
        }
        if getattr(cfg, "share_ref_logps", False):  # reference rows computed here vs read from the memo
            facts["ref_logps"] = {"computed": memo.computed, "reused": memo.reused}
        write_json(work / "train.json", facts)

        write_csv(work / "curves.csv", pd.DataFrame(res.curves))
        write_json(
            work / "metrics.json",
            TrainMetrics(
                train_steps=res.steps,
                train_seconds=res.seconds,
                train_reg_share=regulariser_share(res.curves, getattr(cfg, "lam", None)),
            ).records(),
        )


def check_training_finite(curves: list[dict[str, float]], job: str) -> None:
    """A diverged run (a non-finite training loss or held-out log-ratio, or read-out activations that all
    collapsed to one value) fails its job's train stage, naming the first step where it happened, instead
    of handing a broken policy to every later stage."""
    for row in curves:
        bad = sorted(k for k, v in row.items() if k.startswith(("trainer/loss", "eval/")) and not math.isfinite(v))
        if bad:
            raise NumericalError(
                f"{job}: train: {', '.join(bad)} is not finite at step {int(row['step'])} (training diverged); "
                "lower lr or check the data"
            )
        if row.get("proxy/act_variance") == 0.0:
            raise NumericalError(
                f"{job}: train: every read-out activation is the same at step {int(row['step'])} (the policy "
                "collapsed: training diverged); lower lr or check the data"
            )
