"""End to end: the smoke suite (tiny model, every stage) — CSVs, reuse, determinism, kill + resume, shards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bench.cli import main
from bench.config import load_suite
from bench.plan import expand_jobs, select_shard

REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str) -> int:
    return main(["run", "suite", "smoke", "--out", str(out), "--device", "cpu", *extra])


def _stage_dirs(out: Path) -> dict[str, float]:
    return {p.name: (p / "stage.json").stat().st_mtime for p in (out / "runs").iterdir()}


def test_smoke_writes_both_csvs_with_every_layer(smoke_run):
    board = pd.read_csv(smoke_run / "leaderboard.csv")
    suite, _ = load_suite("smoke")
    assert len(board) == len(suite.tasks) * len(suite.methods)
    assert set(board.method) == {"base", "dpo", "decpo", "dpo_aa", "random_init"} and set(board.task) == set(
        suite.tasks
    )
    tidy = pd.read_csv(smoke_run / "metrics.csv")
    dec = tidy[tidy.metric == "decorrelation"]
    for (_task, _method), g in dec.groupby(["task", "method"]):
        assert sorted(g.layer.astype(int)) == list(range(suite.model.tiny.n_layers))
    base = board[board.method == "base"].set_index("task")
    for col in ("align_score", "decorrelation", "decorrelation_prompt", "sae_explained_variance"):
        assert base[col].notna().all(), col
    for task, col in (("toxicity", "tox_rate"), ("sycophancy", "syco_rate")):
        assert 0 <= base.loc[task, col] <= 1, col  # a share (NaN fails too)
    assert -1 <= base.loc["reframing", "relatedness"] <= 1  # a cosine (NaN fails too)
    assert base["pref_acc"].isna().all() and base["reward_margin"].isna().all()  # its own reference: not measured
    assert board[board.method == "dpo"]["pref_acc"].notna().all()
    assert (board["acts_heldout_leaks"] == 0).all() and (board["acts_heldout_twins"] == 0).all()
    assert not board.isin([float("inf")]).any().any()
    man = json.loads((smoke_run / "manifest.json").read_text())
    assert man["suite"] == "smoke" and man["packages"]["torch"]
    curves = list((smoke_run / "runs").glob("train-*/curves.csv"))
    assert curves and "step" in pd.read_csv(curves[0]).columns


def test_rerun_reuses_every_stage_with_identical_numbers(smoke_run, capsys):
    before = _stage_dirs(smoke_run)
    board = pd.read_csv(smoke_run / "leaderboard.csv")
    assert _run(smoke_run) == 0
    assert _stage_dirs(smoke_run) == before  # no stage folder rewritten
    man = json.loads((smoke_run / "manifest.json").read_text())
    assert man["stages_built"] == [] and len(man["stages_reused"]) == len(before)
    pd.testing.assert_frame_equal(pd.read_csv(smoke_run / "leaderboard.csv"), board)


def test_dry_run_lists_cached_stages(smoke_run, capsys):
    assert _run(smoke_run, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "cached" in out and ":run" not in out


def test_same_seed_twice_gives_identical_numbers(smoke_run, tmp_path):
    """Job 1 of 15 (toxicity base: data build with generation, eval, proxies, SAE) in a fresh folder."""
    assert _run(tmp_path / "o", "--shard", "1/15") == 0
    a = pd.read_csv(smoke_run / "leaderboard.csv")
    b = pd.read_csv(tmp_path / "o" / "leaderboard.csv")
    assert len(b) == 1
    a = a[(a.task == b.task[0]) & (a.method == b.method[0])].reset_index(drop=True)
    a, b = a.dropna(axis=1, how="all"), b.dropna(axis=1, how="all")
    pd.testing.assert_frame_equal(a, b[a.columns])


def test_shards_fill_one_folder_equal_to_unsharded(smoke_run, tmp_path):
    suite, _ = load_suite("smoke")
    jobs = expand_jobs(suite)
    halves = select_shard(jobs, (1, 2)) + select_shard(jobs, (2, 2))
    assert sorted(j.id for j in halves) == sorted(j.id for j in jobs) and len(halves) == len(jobs)
    out = tmp_path / "sharded"
    assert _run(out, "--shard", "1/2") == 0
    assert _run(out, "--shard", "2/2") == 0
    assert main(["leaderboard", str(out)]) == 0
    drop = ["train_seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "leaderboard.csv").drop(columns=drop),
        pd.read_csv(smoke_run / "leaderboard.csv").drop(columns=drop),
    )


def test_killed_run_resumes_without_partial_folders(smoke_run, tmp_path):
    """Kill a real run right after its first stage lands; the re-run reuses it and computes the rest
    of that job (the other jobs' stages are copied from the finished run to keep the test short)."""
    import shutil

    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "suite", "smoke", "--out", str(out), "--device", "cpu"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs").exists() and any((out / "runs").iterdir()):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = {p.name for p in (out / "runs").iterdir()}
    assert landed and all((out / "runs" / k / "stage.json").is_file() for k in landed)
    first_job = json.loads(next((smoke_run / "jobs").glob("*__toxicity__base__s0.json")).read_text())["stages"]
    for p in (smoke_run / "runs").iterdir():
        if p.name not in landed and p.name not in first_job.values():
            shutil.copytree(p, out / "runs" / p.name)
    mtimes = {k: (out / "runs" / k / "stage.json").stat().st_mtime for k in landed}
    assert _run(out) == 0
    assert {k: (out / "runs" / k / "stage.json").stat().st_mtime for k in landed} == mtimes  # reused
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["stages_built"]) == set(first_job.values()) - landed  # the rest of job 1 was computed
    assert not (out / "tmp").exists() or not any((out / "tmp").iterdir())  # no partial folder left
    drop = ["train_seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "leaderboard.csv").drop(columns=drop),
        pd.read_csv(smoke_run / "leaderboard.csv").drop(columns=drop),
    )


def test_every_written_column_is_documented(smoke_run):
    from bench.schema import is_registered, schema_markdown

    board = pd.read_csv(smoke_run / "leaderboard.csv")
    tidy = pd.read_csv(smoke_run / "metrics.csv")
    undocumented = sorted(
        {c for c in board.columns if not is_registered(c)} | {m for m in tidy.metric.unique() if not is_registered(m)}
    )
    assert undocumented == []
    assert (REPO / "docs" / "SCHEMA.md").read_text() == schema_markdown(), "run `python -m bench schema`"


def test_train_stage_without_its_policy_is_rebuilt(smoke_run):
    """Committed results keep no weights: a train stage missing its policy is trusted while nothing
    downstream needs it, and recomputed (not trusted) once a stage that reads it must be rebuilt."""
    import shutil

    job = json.loads(next((smoke_run / "jobs").glob("*__toxicity__dpo__s0.json")).read_text())["stages"]
    shutil.rmtree(smoke_run / "runs" / job["train"] / "policy")
    assert _run(smoke_run, "--shard", "2/15") == 0  # job 2 of 15 is toxicity dpo
    assert json.loads((smoke_run / "manifest.json").read_text())["stages_built"] == []
    # a stage that reads only its own needs (sae_ft: base SAE, fine-tuned base, the model's replayed rows,
    # all present) is rebuilt without the policy those rows were once read from
    (smoke_run / "runs" / job["sae_ft"] / "metrics.json").unlink()
    assert _run(smoke_run, "--shard", "2/15") == 0
    assert json.loads((smoke_run / "manifest.json").read_text())["stages_built"] == [job["sae_ft"]]
    (smoke_run / "runs" / job["eval"] / "metrics.json").unlink()
    assert _run(smoke_run, "--shard", "2/15") == 0
    man = json.loads((smoke_run / "manifest.json").read_text())
    assert sorted(man["stages_built"]) == sorted([job["train"], job["eval"]])
    assert (smoke_run / "runs" / job["train"] / "policy" / "monobench_policy.json").is_file()


def test_workers_run_shards_side_by_side_equal_to_one_process(smoke_run, tmp_path):
    """--workers 2: two single-threaded shards of one folder; the leaderboard equals the one-process run's up
    to float rounding (one intra-op thread instead of two sums in another order)."""
    out = tmp_path / "workers"
    assert _run(out, "--workers", "2") == 0
    drop = ["train_seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "leaderboard.csv").drop(columns=drop),
        pd.read_csv(smoke_run / "leaderboard.csv").drop(columns=drop),
        check_exact=False,
        rtol=1e-3,
        atol=1e-5,
    )
    assert json.loads((out / "manifest.json").read_text())["suite"] == "smoke"
    assert not list((out / "locks").glob("queue-*"))  # the launch's job claims are removed at its end


def test_claims_checklist_of_the_tiny_model_says_what_it_cannot_test(smoke_run, tmp_path):
    """The smoke suite has no decpo_paper and one seed: those rows say why they cannot be tested."""
    import shutil

    from bench.report import write_report

    out = tmp_path / "report"
    shutil.copytree(smoke_run, out)
    md = write_report(out).read_text()
    claims = pd.read_csv(out / "claims.csv")
    paper = claims[claims["treatment"] == "decpo_paper"]
    assert len(paper) and (paper["verdict"] == "cannot test").all() and "Claims checklist" in md
    per_task = claims[(claims["claim"] == "C4") & (claims["treatment"] == "decpo")]
    assert (per_task["verdict"] == "cannot test").all()  # one seed: one paired unit per task
    pooled = claims[(claims["claim"] == "C2") & (claims["treatment"] == "decpo")]
    assert (pooled["n_units"] == 3).all() and pooled["verdict"].isin(
        ["supported", "contradicted", "inconclusive"]
    ).all()
