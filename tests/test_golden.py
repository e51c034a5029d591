"""Stage keys cannot go stale: a stage whose numbers change must bump its code version.

``tests/golden/stages.json`` holds, per stage, its code version (``Stage.version`` in ``bench/stages/<name>.py``)
and every number the smoke suite's stages of that kind wrote (times excluded). A changed number with an unchanged
version fails: the cached stages of every results folder would silently keep the old definition. After
bumping the version, rewrite the file: ``MONOBENCH_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

import json
import math
import os
from pathlib import Path

import pytest

from bench.stages import STAGES

GOLDEN = Path(__file__).parent / "golden" / "stages.json"


def _tolerance(values: dict[str, float], name: str) -> float:
    """Absolute tolerance of one number: float rounding, or — for a share of SAE latents — one latent.

    A latent whose MS permutation test sits at its threshold can flip between CPUs (the MiniLM context
    embeddings round differently with other SIMD kernels): measured once, on two machines running the
    same code and packages, 1 of 155 alive latents of one smoke SAE. A changed definition moves more."""
    if name.split("/")[-1].startswith("sae_frac_"):
        alive = values.get(name.replace(name.split("/")[-1].split("@")[0], "sae_n_alive", 1))
        if alive:
            return 1.0 / alive + 1e-9
    return 1e-5


def stage_values(out: Path) -> dict[str, dict[str, float]]:
    """stage → {"<job>/<metric>[@layer]": value} over the smoke run's job records."""
    values: dict[str, dict[str, float]] = {}
    for job_file in sorted((out / "jobs").glob("*.json")):
        job = json.loads(job_file.read_text())
        for stage, key in job["stages"].items():
            for r in json.loads((out / "runs" / key / "metrics.json").read_text()):
                if r["metric"].endswith("_seconds"):
                    continue
                name = f"{job['task']}/{job['method']}/{r['metric']}" + (
                    f"@{r['layer']}" if r.get("layer") is not None else ""
                )
                values.setdefault(stage, {})[name] = r["value"]
    return values


def test_stage_numbers_change_only_with_a_version_bump(smoke_run):
    now = {s: {"version": STAGES[s].version, "values": v} for s, v in stage_values(smoke_run).items()}
    if os.environ.get("MONOBENCH_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(now) == set(golden), "stages changed; rewrite the golden file (see the module docstring)"
    for stage, rec in now.items():
        old = golden[stage]
        if rec["version"] != old["version"]:
            pytest.fail(
                f"stage {stage!r} is at version {rec['version']} but {GOLDEN.name} records {old['version']}: "
                "rewrite the golden file (MONOBENCH_WRITE_GOLDEN=1)"
            )
        changed = [
            k
            for k in set(rec["values"]) | set(old["values"])
            if k not in rec["values"]
            or k not in old["values"]
            or not math.isclose(rec["values"][k], old["values"][k], rel_tol=1e-3, abs_tol=_tolerance(old["values"], k))
        ]
        assert not changed, (
            f"stage {stage!r} changed {len(changed)} number(s) (e.g. {sorted(changed)[:3]}) without a "
            "version bump: bump the stage's version in bench/stages/<name>.py, then rewrite the golden file"
        )
