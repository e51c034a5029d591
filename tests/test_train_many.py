"""One collection pass for several layers (``collect_sites``) and many SAEs per pass (``train_saes``): each
store and each SAE must equal what the one-site / one-SAE path makes, bit for bit."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import _tiny
from safetensors.torch import load_file

from bench.core import hooks
from saes.activations import collect_activations, collect_sites
from saes.config import SAEConfig
from saes.train import train_sae
from saes.train_many import SAEJob, train_saes

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a cat dog runs jumps over under house tree river blue red happy sad green small bird fish".split()
CFG = SAEConfig(expansion=2, k=8, training_tokens=1536, batch_size=128, context_length=24, heldout_frac=0.25)
STORE_FILES = ("acts", "token_ids", "doc_index", "positions", "doc_tokens", "doc_offsets", "doc_split", "doc_group")


def _texts(n: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(n)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    model, tok = _tiny()
    root = tmp_path_factory.mktemp("many")
    sites = [(0, "mlp.up_proj"), (1, "mlp.up_proj"), (1, "mlp.down_proj")]
    dirs = [root / f"multi-{layer}-{hook}" for layer, hook in sites]
    calls = []
    real = hooks.hooked_sites

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("saes.activations.hooked_sites", counted)
        collect_sites(model, tok, _texts(20), sites=sites, out_dirs=dirs, cfg=CFG, seed=0)
    n_batches = len(calls)
    singles = [
        collect_activations(
            model, tok, _texts(20), layer=layer, hook=hook, out_dir=root / f"one-{layer}-{hook}", cfg=CFG
        )
        for layer, hook in sites
    ]
    return model, tok, sites, dirs, singles, n_batches, root


def test_one_pass_writes_each_site_store_exactly_as_a_single_site_collection(stores):
    _, _, sites, dirs, singles, n_batches, _ = stores
    assert n_batches == -(-20 // CFG.collect_batch_size)  # one forward per batch for all three sites
    for multi, one in zip(dirs, singles):
        for name in STORE_FILES:
            np.testing.assert_array_equal(np.load(multi / f"{name}.npy"), np.load(one / f"{name}.npy"))
        assert json.loads((multi / "manifest.json").read_text()) == json.loads((one / "manifest.json").read_text())
    d_ins = [json.loads((d / "manifest.json").read_text())["d_in"] for d in dirs]
    assert d_ins[1] != d_ins[2]  # up_proj (intermediate) and down_proj (hidden) widths both handled


def test_a_second_collection_reuses_complete_stores_and_collects_only_missing_sites(stores):
    model, tok, sites, dirs, _, _, root = stores
    before = [(d / "acts.npy").stat().st_mtime_ns for d in dirs]
    extra = root / "multi-0-gate"
    collect_sites(model, tok, _texts(20), sites=[*sites, (0, "mlp.gate_proj")], out_dirs=[*dirs, extra], cfg=CFG)
    assert [(d / "acts.npy").stat().st_mtime_ns for d in dirs] == before
    assert (extra / "manifest.json").is_file()


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def test_saes_trained_in_one_pass_equal_saes_trained_one_by_one(stores, tmp_path, monkeypatch):
    _, _, _, dirs, _, _, _ = stores
    wide = CFG.model_copy(update={"expansion": 3, "k": 4})
    batchtopk = CFG.model_copy(update={"architecture": "batchtopk"})
    small_batch = CFG.model_copy(update={"batch_size": 64})  # another batch stream: its own pass
    jobs = [
        SAEJob(dirs[0], CFG, tmp_path / "a"),
        SAEJob(dirs[1], CFG, tmp_path / "b"),
        SAEJob(dirs[2], wide, tmp_path / "c"),
        SAEJob(dirs[1], batchtopk, tmp_path / "d", keep_training_state=True),
        SAEJob(dirs[0], small_batch, tmp_path / "e"),
        SAEJob(dirs[0], CFG, tmp_path / "f", seed=1),
    ]
    import sae_lens.training.multi_sae_trainer as mst

    passes = []
    real_fit = mst.MultiSAETrainer.fit
    monkeypatch.setattr(mst.MultiSAETrainer, "fit", lambda self: passes.append(len(self.saes)) or real_fit(self))
    train_saes(jobs)
    assert sorted(passes) == [1, 1, 4]
    for j in jobs:
        one = train_sae(j.store, j.cfg, tmp_path / f"one-{j.out_dir.name}", seed=j.seed, keep_training_state=True)
        got, want = _weights(j.out_dir), _weights(one)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{j.out_dir.name}: {k}")
        rec = json.loads((j.out_dir / "training.json").read_text())
        ref = json.loads((one / "training.json").read_text())
        assert rec["activation_scaling_factor"] == ref["activation_scaling_factor"]
        assert (rec["n_steps"], rec["final_dead"]) == (ref["n_steps"], ref["final_dead"])
    assert (tmp_path / "d" / "training_state.safetensors").is_file()


def test_two_jobs_into_one_folder_are_refused(stores, tmp_path):
    dirs = stores[3]
    with pytest.raises(ValueError, match="one folder"):
        train_saes([SAEJob(dirs[0], CFG, tmp_path / "x"), SAEJob(dirs[1], CFG, tmp_path / "x")])


def test_two_sites_into_one_folder_are_refused(stores, tmp_path):
    model, tok = stores[0], stores[1]
    with pytest.raises(ValueError, match="distinct folder"):
        collect_sites(model, tok, _texts(4), sites=[(0, "mlp.up_proj"), (1, "mlp.up_proj")], out_dirs=[tmp_path] * 2)


def test_a_module_called_twice_keeps_its_first_output_among_several_sites(monkeypatch):
    """Sites are read at their module's first call, as the one-site path (which stops there) does."""

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def forward(self, input_ids, attention_mask, use_cache):
            return self.b(self.a(self.a(input_ids)))

    m = Twice()
    x = torch.tensor([[1.0, -2.0]])
    monkeypatch.setattr(hooks, "hook_module", lambda model, layer, hook: getattr(model, hook))
    got = hooks.hooked_sites(m, x, x, [(0, "a"), (0, "b")])
    with torch.no_grad():
        first = m.a(x)
        torch.testing.assert_close(got[(0, "a")], first)
        torch.testing.assert_close(got[(0, "b")], m.b(m.a(first)))
    assert not torch.allclose(m.a(first), first)  # the second call's output differs: the test can tell them apart
