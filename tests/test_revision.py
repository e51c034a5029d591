"""A hub model or dataset is identified by its revision, resolved to a commit where the hub answers: a moved
branch changes every stage key, and the runner loads the very commit its keys hold. No network: the hub
client is replaced by an object the test makes."""

from types import SimpleNamespace

import pytest

from bench.config import SuiteConfig
from bench.core.io import stable_hash
from bench.identity import model_identity, resolve_revision, source_identity
from bench.plan import Job, job_facts

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    state = {"sha": SHA_A, "calls": []}

    def info(self, repo_id, revision=None, timeout=None):
        state["calls"].append((repo_id, revision))
        return SimpleNamespace(sha=state["sha"])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", info)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", info)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    resolve_revision.cache_clear()
    yield state
    resolve_revision.cache_clear()


def test_a_moved_branch_changes_the_identity(hub):
    a = model_identity("org/model", revision="main")
    assert a == {"id": "org/model", "revision": "main", "commit": SHA_A}
    hub["sha"] = SHA_B
    resolve_revision.cache_clear()
    assert stable_hash(model_identity("org/model")) != stable_hash(a)
    assert hub["calls"] == [("org/model", "main"), ("org/model", "main")]


def test_a_pinned_commit_needs_no_hub_and_offline_keeps_the_revision(hub, monkeypatch):
    from huggingface_hub import constants

    assert model_identity("org/model", revision=SHA_B)["commit"] == SHA_B and hub["calls"] == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_identity("org/model", revision="v1") == {"id": "org/model", "revision": "v1", "commit": None}


def test_the_suite_revision_reaches_the_keys_and_the_loader(hub, monkeypatch):
    import bench.pool

    suite = SuiteConfig.model_validate(
        {
            "name": "x",
            "model": {"id": "org/model", "revision": "v1"},
            "tasks": {"toxicity": {}},
            "methods": {"base": {}},
        }
    )
    facts = job_facts(suite, Job("toxicity", "base", 0), n_model_layers=4)
    assert facts.model["commit"] == SHA_A and facts.model["revision"] == "v1"
    seen = {}
    monkeypatch.setattr(bench.pool, "load_model", lambda spec, **kw: seen.update(kw, spec=spec) or ("m", "t"))
    bench.pool.ModelPool(suite, store=None).base(0)
    assert seen["spec"] == "org/model" and seen["revision"] == SHA_A  # the commit the keys hold


def test_a_hub_dataset_source_carries_its_revision(hub):
    assert source_identity("hf:org/data:train@v2") == {"revision": "v2", "commit": SHA_A}
    assert hub["calls"] == [("org/data", "v2")]
    from tasks.sources import hf_source

    assert hf_source("hf:org/data") == ("org/data", "train", None)
    assert hf_source("hf:org/data:test@abc") == ("org/data", "test", "abc")


def test_a_gpu_run_gets_its_own_stage_keys_and_cpu_keys_are_unchanged(tmp_path):
    """cuda enters the model identity (so every stage key and the shared reference log-probs' scope): a GPU
    run in a CPU run's folder builds its own stages; on cpu the identity is what it always was."""
    from bench.config import load_suite
    from bench.plan import plan_job
    from bench.store import Store

    suite, _ = load_suite("smoke")
    store = Store(tmp_path)
    job = Job("toxicity", "dpo", 0)
    cpu, default, gpu = (plan_job(suite, store, job, 2, *d) for d in (("cpu",), (), ("cuda",)))
    assert cpu.keys == default.keys and "device" not in cpu.facts.model
    assert gpu.facts.model["device"] == "cuda"
    assert all(gpu.keys[s] != cpu.keys[s] for s in cpu.keys)
