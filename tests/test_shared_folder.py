"""The store on a shared folder and a fresh clone: two runs in different PID namespaces cooperate, a full
disk never cuts a CSV, and upstream weights are recomputed only when a stage that reads them must be."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUITE = (
    'seeds = [0]\n[model]\nid = "tiny:llama"\n[hook]\nlayer = 1\n[proxies]\nn_texts = 4\n'
    "[tasks.sycophancy]\nn_train = 4\nn_eval = 6\nn_eval_unseen = 2\n[methods.base]\n[methods.dpo]\n"
    "max_steps = 2\nbatch_size = 2\neval_every = 1\ncurve_pairs = 2\ncurve_prompts = 2\n"
    "max_length = 160\nmax_prompt_length = 120\n"
    "[sae]\nexpansion = 2\nk = 8\ntraining_tokens = 512\nbatch_size = 64\nmax_texts = 16\ncontext_length = 128\n"
    "[sae.eval]\nms_null_draws = 19\n"
)


def _unshare_works(*flags: str) -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    suite = tmp / "s.toml"
    suite.write_text(SUITE)
    assert main(["run", "suite", str(suite), "--out", str(tmp / "out"), "--device", "cpu"]) == 0
    return suite, tmp / "out"


def _copy(trained, tmp_path) -> tuple[Path, Path, dict]:
    suite, out = trained
    shutil.copytree(out, tmp_path / "out")
    job = next(json.loads(p.read_text()) for p in (tmp_path / "out" / "jobs").glob("*__dpo__*.json"))
    return suite, tmp_path / "out", job["stages"]


def _built(out: Path) -> list[str]:
    return [k.split("-")[0] for k in json.loads((out / "manifest.json").read_text())["stages_built"]]


def test_a_fresh_clone_without_weights_retrains_nothing(trained, tmp_path, capsys):
    """results/ commits records, not the policy or the activations: nothing downstream needs them, so a
    re-run (and --dry-run) reuses every stage."""
    suite, out, keys = _copy(trained, tmp_path)
    shutil.rmtree(out / "runs" / keys["train"] / "policy")
    for f in (out / "runs" / keys["acts"]).glob("*.npy"):
        f.unlink()
    assert main(["run", "suite", str(suite), "--out", str(out), "--dry-run"]) == 0
    dpo_line = next(line for line in capsys.readouterr().out.splitlines() if "__dpo__" in line)
    assert "train:cached" in dpo_line and "acts:cached" in dpo_line and ":run" not in dpo_line
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    assert _built(out) == []


def test_a_stage_to_rebuild_recomputes_the_upstream_weights_it_reads(trained, tmp_path, capsys):
    suite, out, keys = _copy(trained, tmp_path)
    shutil.rmtree(out / "runs" / keys["train"] / "policy")
    for f in (out / "runs" / keys["acts"]).glob("*.npy"):
        f.unlink()
    (out / "runs" / keys["sae"] / "metrics.json").unlink()
    assert main(["run", "suite", str(suite), "--out", str(out), "--dry-run"]) == 0
    dpo_line = next(line for line in capsys.readouterr().out.splitlines() if "__dpo__" in line)
    stages = ["data:cached", "train:run", "eval:cached", "proxies:cached", "acts:run", "sae:run", "neurons:cached"]
    assert dpo_line.split()[3:] == stages
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(_built(out)) == ["acts", "sae", "train"]  # not data, eval, proxies or neurons


@pytest.mark.skipif(not _unshare_works("--pid", "--fork", "--map-root-user"), reason="unshare --pid not permitted")
def test_two_runs_in_different_pid_namespaces_share_one_folder(tmp_path):
    """The second run starts while the first has live temp folders: it must not delete them (their PIDs
    mean nothing in its namespace), and each stage is computed once — one run waits for the other's."""
    suite, out = tmp_path / "s.toml", tmp_path / "out"
    suite.write_text(SUITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    run = [sys.executable, "-m", "bench", "run", "suite", str(suite), "--out", str(out), "--device", "cpu"]
    cmd = ["unshare", "--pid", "--fork", "--map-root-user", *run]
    # the first run's PID (≈ 40 in its namespace) names no process in the second's, where a PID check would
    # take its live temp folders for a dead run's
    spawn = 'for i in $(seq 40); do /bin/true; done; "$@"'
    first = subprocess.Popen(
        [*cmd[:4], "sh", "-c", spawn, "sh", *run], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    while not any((out / "tmp").glob("*.*.*.*")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None and any((out / "tmp").glob("*.*.*.*"))  # the first run is mid-stage
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    first_out = first.communicate(timeout=600)[0]
    assert first.returncode == 0 and second.returncode == 0, first_out + second.stdout + second.stderr
    lines = [ln for ln in (first_out + second.stdout).splitlines() if " stage(s) built" in ln]
    built = sum(int(ln.split(": ", 1)[1].split()[0]) for ln in lines)
    stages = [p for p in (out / "runs").iterdir()]
    assert built == len(stages)  # no stage computed twice, none lost
    assert all((p / "stage.json").is_file() for p in stages)
    job = next(json.loads(p.read_text()) for p in (out / "jobs").glob("*__dpo__*.json"))
    assert (out / "runs" / job["stages"]["train"] / "policy").is_dir()  # not deleted under the first run
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2


@pytest.mark.skipif(not _unshare_works("-rm"), reason="cannot mount a tmpfs here (unshare -rm not permitted)")
def test_a_full_disk_never_cuts_a_csv_or_json(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    script = (
        "import pandas as pd; from pathlib import Path; from bench.core.io import write_csv, write_json\n"
        f"d = Path({str(mnt)!r})\n"
        "write_csv(d / 'metrics.csv', pd.DataFrame({'a': [1, 2]})); write_json(d / 'm.json', [1])\n"
        "for write, path, big in ((write_csv, d / 'metrics.csv', pd.DataFrame({'a': range(100000)})),\n"
        "                         (write_json, d / 'm.json', list(range(100000)))):\n"
        "    try:\n        write(path, big)\n    except OSError as e:\n        print('full', e.errno)\n"
        "print(repr((d / 'metrics.csv').read_text()), repr((d / 'm.json').read_text()),\n"
        "      sorted(p.name for p in d.iterdir()))\n"
    )
    sh = f'mount -t tmpfs -o size=64k tmpfs {mnt} && {sys.executable} -c "$0"'
    res = subprocess.run(["unshare", "-rm", "sh", "-c", sh, script], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == ["full 28", "full 28"]  # ENOSPC, both times
    assert lines[2] == "'a\\n1\\n2\\n' '[\\n  1\\n]' ['m.json', 'metrics.csv']"  # old files whole, no temp left


@pytest.mark.skipif(not _unshare_works("--pid", "--fork", "--map-root-user"), reason="unshare --pid not permitted")
def test_cleanup_in_another_pid_namespace_spares_live_work(tmp_path):
    """A live build's temp folder, named with a PID of its own namespace (≈ 40), is seen from a second
    namespace where that PID names nothing: cleanup there must judge it by its build lock, not its PID."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = (
        "import os, time; from pathlib import Path; from bench.store import HOST, Store\n"
        f"s = Store(Path({str(tmp_path)!r}))\n"
        "with s.claim('sae-live'):\n"
        "    (s.tmp / f'sae-live.{HOST}.{os.getpid()}.x').mkdir(parents=True)\n"
        f"    Path({str(ready)!r}).write_text(str(os.getpid()))\n"
        f"    while not Path({str(release)!r}).exists(): time.sleep(0.02)\n"
    )
    ns = ["unshare", "--pid", "--fork", "--map-root-user"]
    spawn = 'for i in $(seq 40); do /bin/true; done; "$@"'
    proc = subprocess.Popen([*ns, "sh", "-c", spawn, "sh", sys.executable, "-c", holder], env=env)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert int(ready.read_text()) > 20
        cleaner = "from pathlib import Path; from bench.store import Store\n"
        cleaner += f"print(Store(Path({str(tmp_path)!r})).clean_tmp())"
        res = subprocess.run([*ns, sys.executable, "-c", cleaner], env=env, capture_output=True, text=True)
        assert res.stdout.strip() == "[]", res.stderr
        assert len(list((tmp_path / "tmp").iterdir())) == 1
    finally:
        release.write_text("")
        proc.wait(timeout=60)
    res = subprocess.run([*ns, sys.executable, "-c", cleaner], env=env, capture_output=True, text=True)
    assert "sae-live" in res.stdout  # its run is gone: now it is a leftover
