"""Command line: ``python -m bench <command>``.

python -m bench run suite smoke              # tiny model, every stage, ~1 min on a laptop CPU
python -m bench run suite                    # the default suite (embedded SmolLM2-135M-Instruct)
python -m bench run suite default --dry-run  # jobs and stages, cached or to run
python -m bench list suites|tasks|methods|models
python -m bench leaderboard results/default [more result folders …]
python -m bench data show toxicity --n 5
python -m bench show-feature results/smoke/runs/sae-… 12
python -m bench report results/default       # figures + report.md from stored runs
python -m bench browse results/default       # static offline feature browser → results/default/browse/
python -m bench power results/default --effect 0.02   # MDE and seeds needed per paired comparison
python -m bench perf --quick                 # side-by-side speed ratios
python -m bench validate --quick             # every metric's negative and positive controls

Each command imports what it needs inside its handler, so ``--help`` and ``list`` start without loading
torch, transformers or TRL (the only function-local imports of project modules).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bench.core.errors import ConfigError, MonobenchError, StoreError
from bench.core.logs import LEVELS, logging_at

log = logging.getLogger("bench")


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N (e.g. 1/2), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= I <= N")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default="warning",
        help="monobench's and the libraries' logging (debug also shows library deprecation warnings "
        "and the traceback of user errors)",
    )
    p.add_argument("--verbose", "-v", action="store_const", const="debug", dest="log_level", help="--log-level debug")
    sub = p.add_subparsers(dest="cmd", required=True)
    _run_parser(sub)
    _inspect_parsers(sub)
    _tool_parsers(sub)
    return p


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="run a suite").add_subparsers(dest="what", required=True)
    rs = run.add_parser("suite", help="run a suite's jobs (cached stages are reused)")
    rs.add_argument("suite", nargs="?", default="default", help="shipped suite name or a .toml path")
    rs.add_argument("--out", type=Path, help="results folder (default results/<suite>)")
    rs.add_argument("--seed", type=int, action="append", help="seed(s) to run instead of the suite's")
    rs.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rs.add_argument("--force", action="store_true", help="recompute every stage of the selected jobs")
    rs.add_argument("--shard", type=_shard, default=(1, 1), metavar="I/N", help="run shard I of N of the jobs")
    rs.add_argument("--dry-run", action="store_true", help="print jobs and stages without running")
    rs.add_argument(
        "--verify", action="store_true", help="check every stored file's hash, not only its size, before reusing it"
    )
    rs.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the jobs as N local shards side by side (cpu_count // N threads each)",
    )
    rs.add_argument(
        "--verbose",
        "-v",
        action="store_const",
        const="debug",
        dest="log_level",
        default=argparse.SUPPRESS,
        help="--log-level debug",
    )


def _inspect_parsers(sub) -> None:
    ls = sub.add_parser("list", help="list suites, tasks, methods or models")
    ls.add_argument("what", choices=["suites", "tasks", "methods", "models"])
    lb = sub.add_parser("leaderboard", help="re-render the CSVs from stored runs (merging folders)")
    lb.add_argument("dirs", nargs="*", type=Path, default=[Path("results/default")])
    lb.add_argument("--out", type=Path, help="where to write the merged CSVs (default: the first folder)")
    data = sub.add_parser("data", help="inspect task data").add_subparsers(dest="what", required=True)
    ds = data.add_parser("show", help="print a few built pairs of a task")
    ds.add_argument("task")
    ds.add_argument("--n", type=int, default=5)
    ds.add_argument("--suite", default="default", help="suite whose task config and model to use")
    ds.add_argument("--out", type=Path, help="results folder holding the cached data (default results/<suite>)")
    ds.add_argument("--seed", type=int, default=None)
    sf = sub.add_parser("show-feature", help="top held-out contexts of one SAE latent")
    sf.add_argument("run", type=Path, help="an sae-… stage folder")
    sf.add_argument("feature", type=int)
    sf.add_argument("--n", type=int, default=10)
    rp = sub.add_parser("report", help="figures and an HTML/Markdown report from stored runs")
    rp.add_argument("dir", type=Path)
    pw = sub.add_parser("power", help="minimum detectable effects and seeds needed per comparison → DIR/power.csv")
    pw.add_argument("dir", type=Path)
    pw.add_argument("--effect", type=float, default=0.02, help="the effect size to plan for (metric units)")
    br = sub.add_parser("browse", help="a static offline feature browser of every SAE → DIR/browse/index.html")
    br.add_argument("dir", type=Path)
    br.add_argument("--max-latents", type=int, help="latents per SAE with a page (default: the suite's [browse])")


def _tool_parsers(sub) -> None:
    va = sub.add_parser("validate", help="run every metric's negative and positive controls → validation.csv")
    va.add_argument("--quick", action="store_true", help="skip the controls that train models (< 3 min)")
    va.add_argument(
        "--out",
        type=Path,
        default=Path("results/validation"),
        help="folder for validation.csv (a results folder's report then includes it)",
    )
    va.add_argument("--seed", type=int, default=0)
    sc = sub.add_parser("schema", help="write docs/SCHEMA.md (every output column) from the metric registry")
    sc.add_argument("--out", type=Path, default=Path("docs/SCHEMA.md"))
    pf = sub.add_parser("perf", help="side-by-side performance ratios")
    pf.add_argument("--quick", action="store_true")
    pf.add_argument("--out", type=Path, default=Path("results/perf"))
    pf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pf.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help="run only the benchmark giving this row (repeatable); the other rows of perf.csv are kept",
    )
    pf.add_argument(
        "--keep-going",
        action="store_true",
        help="exit 0 even when a benchmark fails (its rows say 'not run: <reason>')",
    )


def cmd_run(args) -> int:
    from bench.config import load_suite
    from bench.runner import run_suite

    suite, path = load_suite(args.suite)
    out = args.out or Path("results") / suite.name
    if args.workers > 1 and not args.dry_run:
        from bench.workers import finish, run_workers

        if args.shard != (1, 1):
            raise ConfigError("--workers splits the suite into shards itself; drop --shard")
        from bench.plan import expand_jobs
        from bench.store import record_name

        jobs = [record_name(suite.model.id, j.id) for j in expand_jobs(suite, args.seed)]
        code = run_workers(argparse.Namespace(**{**vars(args), "out": out}), args.workers, jobs, out / "jobs")
        finish(out, suite, path, device=args.device, seeds=args.seed or suite.seeds)
        print(f"suite {suite.name}: {args.workers} workers done → {out}/leaderboard.csv")
        return code
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    progress = sys.stderr.isatty() and not args.dry_run and not os.environ.get("MONOBENCH_WORKER")
    if not progress:  # SAELens's trainer bar can only be silenced through tqdm's environment switch
        os.environ.setdefault("TQDM_DISABLE", "1")
    summary = run_suite(
        suite,
        out,
        seeds=args.seed,
        device=args.device,
        force=args.force,
        shard=args.shard,
        dry_run=args.dry_run,
        verify=args.verify,
        suite_file=path,
        progress=progress,
    )
    from bench import dist

    if not args.dry_run and dist.is_main():
        print(f"suite {suite.name}: {len(summary.jobs)} job(s) in {summary.seconds:.1f}s → {out}/leaderboard.csv")
        if summary.failed:
            print(f"{len(summary.failed)} job(s) failed and have no row (reasons in {out}/failures/):", file=sys.stderr)
            for job, why in summary.failed.items():
                print(f"  {job}: {why}", file=sys.stderr)
            return 1
    return 0


def cmd_list(args) -> int:
    if args.what == "suites":
        from bench.config import load_suite, shipped_suites

        for name, path in sorted(shipped_suites().items()):
            suite, _ = load_suite(str(path))
            print(f"{name:<10} {suite.model.id:<34} {suite.description}")
    elif args.what == "tasks":
        from tasks import TASKS

        for name, cls in sorted(TASKS.items()):
            print(cls.describe(cls.config_cls()) if hasattr(cls, "describe") else name)
    elif args.what == "methods":
        from bench.methods import METHODS, ordered

        for name in ordered(METHODS):
            print(f"{name:<12} {METHODS[name].summary}")
    else:
        from bench.models import MODELS_HELP

        for name, text in MODELS_HELP.items():
            print(f"{name:<34} {text}")
    return 0


def cmd_leaderboard(args) -> int:
    from bench.core.io import write_json
    from bench.leaderboard import write_leaderboard
    from bench.manifest import merge_shard_manifests

    missing = [str(d) for d in args.dirs if not (d / "jobs").is_dir()]
    if missing:
        raise StoreError(f"no stored runs in {', '.join(missing)} (expected a jobs/ folder from `run suite`)")
    out = args.out or args.dirs[0]
    if (merged := merge_shard_manifests(args.dirs[0])) is not None and out == args.dirs[0]:
        write_json(out / "manifest.json", merged)
    board = write_leaderboard(out, list(args.dirs))
    print(f"{len(board)} row(s) → {out}/leaderboard.csv, {out}/metrics.csv")
    return 0


def cmd_data_show(args) -> int:
    from bench.config import load_suite
    from bench.core.io import read_json
    from bench.models import resolve_device
    from bench.plan import Job, Plan, plan_job
    from bench.runner import Runner
    from bench.store import Store

    suite, _ = load_suite(args.suite)
    if args.task not in suite.tasks:
        raise ConfigError(f"task {args.task!r} is not in suite {suite.name} (has: {', '.join(suite.tasks)})")
    out = args.out or Path("results") / suite.name
    store = Store(out)
    runner = Runner(suite, store, device="auto", progress=False)
    seed = args.seed if args.seed is not None else suite.seeds[0]
    plan = plan_job(suite, store, Job(args.task, "base", seed), runner.n_layers(seed), resolve_device("auto").type)
    plan = Plan(plan.facts, tuple(s for s in plan.stages if s.name == "data"))
    runner.run_job(plan)
    data = read_json(store.path(plan.keys["data"]) / "data.json")
    print(
        f"{args.task}: {len(data['train_pairs'])} train pairs, {len(data['eval_pairs'])} held-out pairs, "
        f"{len(data['eval_prompts'])} held-out prompts; provenance: {data.get('provenance', {})}"
    )
    for i, pair in enumerate(data["train_pairs"][: args.n]):
        print(f"\n--- pair {i}\nPROMPT:   {pair['prompt']}\nCHOSEN:   {pair['chosen']}\nREJECTED: {pair['rejected']}")
    return 0


def cmd_show_feature(args) -> int:
    from saes.show import show_feature

    print(show_feature(args.run, args.feature, n=args.n))
    return 0


def cmd_report(args) -> int:
    from bench.report import write_report

    path = write_report(args.dir)
    print(f"report → {path}")
    return 0


def cmd_power(args) -> int:
    from bench.power import write_power

    if not (args.dir / "leaderboard.csv").is_file():
        raise StoreError(f"no leaderboard.csv in {args.dir}; run a suite into it first")
    path, table = write_power(args.dir, args.effect)
    if table.empty:
        print("no paired comparison with ≥ 2 common seeds in this folder")
        return 0
    focus = table[table["comparison"].str.startswith(("decpo − dpo", "dpo − base"))]
    for _, r in (focus if not focus.empty else table).iterrows():
        need = (
            "–"
            if pd_isna(r["seeds_needed"])
            else ">200"
            if r["seeds_needed"] == float("inf")
            else int(r["seeds_needed"])
        )
        print(
            f"{r['comparison']:<20} {r['task']:<11} {r['metric']:<34} n={int(r['n_seeds'])} diff {r['diff']:+.4f} "
            f"MDE {r['mde']:.4f}  seeds for |δ|={args.effect:g}: {need}"
        )
    print(f"all comparisons → {path}")
    return 0


def pd_isna(v) -> bool:
    return v != v  # NaN


def cmd_browse(args) -> int:
    from bench.browse.config import BrowseConfig
    from bench.browse.site import write_site
    from bench.core.io import read_json

    manifest = args.dir / "manifest.json"
    table = (read_json(manifest).get("suite_config") or {}).get("browse") if manifest.is_file() else None
    cfg = BrowseConfig.model_validate(table or {})
    if args.max_latents is not None:
        cfg = cfg.model_copy(update={"max_latents": args.max_latents})
    print(f"feature browser → {write_site(args.dir, cfg)}")
    return 0


def cmd_schema(args) -> int:
    from bench.core.io import write_text
    from bench.schema import schema_markdown

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, schema_markdown())
    print(f"schema → {args.out}")
    return 0


def cmd_validate(args) -> int:
    from bench.validate import run_controls, verdicts

    table = run_controls(args.out, quick=args.quick, seed=args.seed)
    for line in verdicts(table):
        print(line)
    n_fail = int((~table["pass"]).sum())
    print(f"{len(table)} control(s), {n_fail} failing → {args.out}/validation.csv")
    return 1 if n_fail else 0


def cmd_perf(args) -> int:
    from benchmarks.perf import ROWS, run_perf

    if set(args.only) - set(ROWS):
        raise ConfigError(f"perf --only {', '.join(sorted(set(args.only) - set(ROWS)))}: rows are {', '.join(ROWS)}")
    rows = run_perf(args.out, quick=args.quick, device=args.device, only=args.only)
    failed = [r.benchmark for r in rows if r.status != "ok"]
    if failed and not args.keep_going:
        print(
            f"error: benchmark(s) {', '.join(failed)} did not run (see the table); --keep-going to accept",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (``MonobenchError``) is one line and exit 2, any other error a bug
    with its traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    handlers = {
        "run": cmd_run,
        "list": cmd_list,
        "leaderboard": cmd_leaderboard,
        "data": cmd_data_show,
        "show-feature": cmd_show_feature,
        "report": cmd_report,
        "browse": cmd_browse,
        "power": cmd_power,
        "perf": cmd_perf,
        "schema": cmd_schema,
        "validate": cmd_validate,
    }
    with logging_at(args.log_level):
        try:
            return handlers[args.cmd](args)
        except KeyboardInterrupt:
            print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
            return 130
        except MonobenchError as e:
            if args.log_level == "debug":
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            return 2


def entry() -> None:
    sys.exit(main())
