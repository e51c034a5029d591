"""DecPO λ × layer sweep on a suite's own task data (docs/SWEEP.md records the run behind the defaults).

    python -m bench sweep decpo --suite default --lambdas 0,1e-3,1e-2,1e-1 --layers 7,15,22

For each task the data stage is built or reused exactly as ``run suite`` does (same store key, so the
pairs are the suite's own), then ``bench.align.train_policy`` trains ``decpo`` with the suite's
``[methods.decpo]`` table, only λ and the layer overridden. λ = 0 is the DPO baseline through the very
same code path; it is always run first for each layer so every row can be compared with it. One row
per run: the held-out preference metrics and the hooked layer's proxies (``proxy/decorrelation``,
``proxy/decor_loss``, ``eval/decpo_term`` of ``TrainResult.curves``) at the first and the last curve
step, and the end values minus those of the λ = 0 run at the same layer (``*_vs_dpo``).
"""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

# (column prefix, curve column) recorded at the first (start_) and last (end_) curve row
CURVE_COLS = {"pref_acc": "eval/pref_acc", "reward_margin": "eval/reward_margin",
              "decorrelation": "proxy/decorrelation", "decor_loss": "proxy/decor_loss",
              "decpo_term": "eval/decpo_term"}
VS_DPO = ("pref_acc", "reward_margin", "decorrelation", "decor_loss")
COLUMNS = (["task", "lambda", "layer", "steps", "seconds"]
           + [f"{w}_{k}" for k in CURVE_COLS for w in ("start", "end")]
           + ["d_decorrelation"] + [f"{k}_vs_dpo" for k in VS_DPO])


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_layers(text: str) -> list[int | float]:
    """``7,15,0.5`` → [7, 15, 0.5]: an int is a layer index, a number with a dot a fraction of depth."""
    return [float(x) if "." in x else int(x) for x in (s.strip() for s in text.split(",")) if x]


def task_data(suite, store_dir: Path, task: str, seed: int, device: str):
    """(runner, data) for ``task``: the suite's data stage from ``store_dir``, built there when missing."""
    from bench.plan import Job, plan_job
    from bench.runner import Runner
    from bench.store import Store, read_json
    from tasks import TaskData

    store = Store(store_dir)
    runner = Runner(suite, store, device=device, progress=False)
    plan = plan_job(suite, store, Job(task, "base", seed), runner.n_layers(seed))
    plan.stages = {"data": plan.stages["data"]}
    runner.run_job(plan)
    return runner, plan, TaskData.model_validate(read_json(store.path(plan.stages["data"][0]) / "data.json"))


def _row(res, task: str, lam: float) -> dict:
    first, last = res.curves[0], res.curves[-1]
    row = {"task": task, "lambda": lam, "layer": res.layer, "steps": res.steps, "seconds": round(res.seconds, 2)}
    for k, col in CURVE_COLS.items():
        row[f"start_{k}"], row[f"end_{k}"] = first.get(col), last.get(col)
    row["d_decorrelation"] = row["end_decorrelation"] - row["start_decorrelation"]
    return row


def run_sweep(suite, *, tasks: list[str] | None = None, lambdas: list[float], layers: list[int | float],
              out: Path, store_dir: Path, device: str = "auto", seed: int | None = None,
              echo=print) -> pd.DataFrame:
    """Run the sweep; writes ``out/sweep.csv`` (after every run, so a cut-off sweep keeps its rows) and
    ``out/curves.csv`` (every curve row of every run); returns the table."""
    from bench.align import train_policy
    from bench.methods import METHODS
    from tasks._base import proxy_pairs

    tasks = tasks or list(suite.tasks)
    unknown = [t for t in tasks if t not in suite.tasks]
    if unknown:
        raise ValueError(f"task(s) {', '.join(unknown)} not in suite {suite.name} (has: {', '.join(suite.tasks)})")
    lambdas = [0.0] + [lam for lam in lambdas if lam != 0]  # the DPO baseline first, always
    base_cfg = suite.methods.get("decpo") or METHODS["decpo"].config_cls()
    seed = suite.seeds[0] if seed is None else seed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    curves: list[dict] = []
    for task in tasks:
        t0 = time.time()
        runner, plan, data = task_data(suite, store_dir, task, seed, device)
        echo(f"{task}: data stage {plan.stages['data'][0]} ({len(data.train_pairs)} train / "
             f"{len(data.eval_pairs)} held-out pairs, {time.time() - t0:.1f}s)")
        model, tok = runner.base(seed)
        for layer in layers:
            for lam in lambdas:
                cfg = type(base_cfg).model_validate(base_cfg.model_dump() | {"lam": lam, "layer": layer})
                res = train_policy("decpo", cfg, model, tok, data.train_pairs, data.eval_pairs,
                                   out / "tmp" / f"{task}_lam{lam:g}_layer{layer}", seed,
                                   use_chat_template=suite.tasks[task].use_chat_template,
                                   layer=plan.hook_layer, hook=suite.hook.module, eval_beta=suite.eval.beta,
                                   proxy_pairs=proxy_pairs(data, suite.proxies.n_texts))
                row = _row(res, task, lam)
                base = next(r for r in rows + [row] if r["task"] == task and r["layer"] == row["layer"]
                            and r["lambda"] == 0)
                row |= {f"{k}_vs_dpo": row[f"end_{k}"] - base[f"end_{k}"] for k in VS_DPO}
                rows.append(row)
                curves += [{"task": task, "lambda": lam, "layer": res.layer, **c} for c in res.curves]
                echo(f"  λ={lam:g} layer {row['layer']}: pref_acc {row['end_pref_acc']:.3f}, decorrelation "
                     f"{row['start_decorrelation']:.4f} → {row['end_decorrelation']:.4f} "
                     f"(vs DPO {row['decorrelation_vs_dpo']:+.4f}), {row['seconds']:.1f}s")
                pd.DataFrame(rows, columns=COLUMNS).to_csv(out / "sweep.csv", index=False)
                pd.DataFrame(curves).to_csv(out / "curves.csv", index=False)
                del res
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        del runner, model
    shutil.rmtree(out / "tmp", ignore_errors=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def format_table(df: pd.DataFrame) -> str:
    """The table the command prints: the columns that decide λ and layer."""
    cols = ["task", "lambda", "layer", "end_pref_acc", "end_reward_margin", "start_decorrelation",
            "end_decorrelation", "decorrelation_vs_dpo", "start_decor_loss", "end_decor_loss", "decor_loss_vs_dpo"]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def sweep_decpo(model: torch.nn.Module, tokenizer, train_pairs: list, eval_pairs: list, out_dir: Path,
                lambdas: list[float], layers: list[int | float], seed: int = 0, base_cfg=None,
                **kw) -> list[dict[str, float]]:
    """Train DecPO for every (λ, layer) on given pairs (no suite, no store) and return one row per run:
    its last curve row plus λ, layer and the step-0 DecPO term. ``base_cfg``: a ``DecPOMethodConfig``."""
    from bench.align import train_policy
    from bench.methods import DecPOMethodConfig

    base_cfg = base_cfg or DecPOMethodConfig()
    rows = []
    for lam in lambdas:
        for lay in layers:
            cfg = DecPOMethodConfig.model_validate(base_cfg.model_dump() | {"lam": lam, "layer": lay})
            res = train_policy("decpo", cfg, model, tokenizer, train_pairs, eval_pairs,
                               Path(out_dir) / f"lam{lam:g}_layer{lay}", seed, **kw)
            rows.append({"lambda": lam, "layer": res.layer, **res.curves[-1],
                         "start/eval_decpo_term": res.curves[0]["eval/decpo_term"]})
    return rows
