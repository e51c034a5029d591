"""Offline means offline: the smoke suite runs with every network call blocked and ``HF_HUB_OFFLINE`` unset.

A ``sitecustomize`` on the child's path replaces name resolution and TCP/UDP connects with a guard that
records the attempt and raises; the run must succeed and record none (TRL's trainers would otherwise send
telemetry to the hub, and with ``CI`` unset they do). The guard proves it was loaded in the run (another
``sitecustomize`` earlier on the path would shadow it) and that it catches a lookup (a positive control).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUARD = textwrap.dedent(
    """
    import json, os, socket
    _log = os.environ["NET_GUARD_LOG"]
    with open(_log + ".loaded", "a") as f:
        f.write(f"{os.getpid()}\\n")

    def _blocked(what, *args, **kw):
        with open(_log, "a") as f:
            f.write(json.dumps([what, repr(args)[:200]]) + "\\n")
        raise OSError(f"network blocked by the test: {what}")

    _connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _blocked("connect", address)
        return _connect(self, address)
    socket.socket.connect = connect
    socket.getaddrinfo = lambda *a, **k: _blocked("getaddrinfo", *a)
    socket.gethostbyname = lambda *a, **k: _blocked("gethostbyname", *a)
    """
)


def _guarded_env(tmp_path: Path, log: Path) -> dict[str, str]:
    (tmp_path / "guard").mkdir(exist_ok=True)
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "CI")}
    return env | {"PYTHONPATH": f"{tmp_path / 'guard'}{os.pathsep}{REPO}", "NET_GUARD_LOG": str(log)}


def test_the_guard_records_a_lookup(tmp_path):
    log = tmp_path / "net.log"
    code = "import socket\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError:\n    pass"
    subprocess.run([sys.executable, "-c", code], env=_guarded_env(tmp_path, log), check=True, timeout=60)
    assert [json.loads(line)[0] for line in log.read_text().splitlines()] == ["getaddrinfo"]


def test_smoke_suite_with_the_network_blocked(tmp_path):
    log = tmp_path / "net.log"
    env = _guarded_env(tmp_path, log)
    out = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "bench", "run", "suite", "smoke", "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    attempts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(f"{log}.loaded").is_file(), "the network guard was not loaded in the run"
    assert attempts == [], f"network attempts: {attempts[:5]}"
    assert (out / "leaderboard.csv").is_file()
