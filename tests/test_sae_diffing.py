"""The base SAE, its transfer to aligned models and its fine-tunes (issue 18): formulas by hand, the pieces on
the tiny model, and the smoke suite end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from saes.corpus import TASK_FILES, CorpusConfig, build_corpus
from saes.diffing import bh_reject, concept_rank, doc_rates, jaccard, jaccard_chance, sign_flip_test, top_changed
from saes.replay import ReplayedRows, copy_rows, pick_rows, replay_rows

# ----- formulas ------------------------------------------------------------------------------------------


def test_doc_rates_average_firing_per_document():
    active = torch.tensor([[1, 0], [0, 0], [1, 1], [1, 0]], dtype=torch.bool)
    rates, ids = doc_rates(active, np.array([7, 7, 3, 7]))
    assert ids.tolist() == [3, 7]
    assert rates.tolist() == [[1.0, 1.0], [2 / 3, 0.0]]


def test_sign_flip_p_value_by_hand():
    """3 documents all +1: |mean| = 1 only under the 2 of 8 sign patterns that keep them equal, so p → 1/4."""
    delta = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t, p = sign_flip_test(delta, draws=9999, seed=0)
    assert t.tolist() == [1.0, 0.0]
    assert abs(float(p[0]) - 0.25) < 0.02
    assert float(p[1]) == 1.0  # nothing changed: every draw ties


def test_benjamini_hochberg_by_hand():
    # thresholds q·i/m = .0125, .025, .0375, .05: 0.01, 0.02, 0.03 pass, 0.5 does not
    assert bh_reject(torch.tensor([0.01, 0.02, 0.03, 0.5]), 0.05).tolist() == [True, True, True, False]
    # step-up: 0.014 > .0125 alone, but 0.02 ≤ .025 at rank 2 rejects both smallest
    assert bh_reject(torch.tensor([0.02, 0.014, 0.5, 0.5]), 0.05).tolist() == [True, True, False, False]
    assert bh_reject(torch.tensor([0.02, 0.9]), 0.01).tolist() == [False, False]


def test_concept_rank_and_top_changed():
    change, alive = torch.tensor([0.1, -5.0, 0.3, 2.0, 0.0]), torch.tensor([True, True, True, True, False])
    # |change| among alive: 0.1 (r1), 5 (r4), 0.3 (r2), 2 (r3); (r − ½)/4 → latents 1 and 3: 0.875, 0.625
    assert concept_rank(change, np.array([1, 3]), alive) == pytest.approx(0.75)
    assert concept_rank(torch.zeros(5), np.array([1]), alive) == pytest.approx(0.5)  # nothing changed: chance
    # density-matched: 2 groups by rate, {0, 2} (rare) and {1, 3} (frequent); latent 3's |2| ranks 1st of 2
    # in its group → (1 − ½)/2 = 0.25, although it ranks 3rd of 4 overall
    rate = torch.tensor([0.01, 0.5, 0.02, 0.4, 0.0])
    assert concept_rank(change, np.array([3]), alive, rate, bins=2) == pytest.approx(0.25)
    assert concept_rank(change, np.array([3]), alive) == pytest.approx(0.625)
    assert top_changed(change, alive, 2) == [1, 3]


def test_jaccard_and_its_exact_chance_level():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard_chance(1, 2) == pytest.approx(0.5)  # same item (J = 1) half the time
    assert jaccard_chance(2, 2) == pytest.approx(1.0)


# ----- corpus, replay, fine-tune ------------------------------------------------------------------------


def test_corpus_is_deduplicated_and_shares_no_file_with_the_tasks():
    texts, prov = build_corpus(CorpusConfig(texts_per_file=5))
    assert len(texts) == len(set(texts)) == prov["n_texts"] == sum(prov["files"].values())
    assert not set(prov["files"]) & TASK_FILES
    assert build_corpus(CorpusConfig(texts_per_file=5))[1]["texts_sha256"] == prov["texts_sha256"]
    with pytest.raises(ValueError, match="read by the tasks"):
        CorpusConfig(files=("107_hate_offensive",))


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from bench.models import load_model
    from saes.activations import StoreOptions, collect_activations
    from saes.store import ActivationStore

    model, tok = load_model("tiny:llama", seed=0)
    texts, _ = build_corpus(CorpusConfig(texts_per_file=3))
    out = tmp_path_factory.mktemp("store")
    collect_activations(model, tok, texts, layer=1, out_dir=out, options=StoreOptions(max_length=32))
    return model, ActivationStore(out)


def test_pick_rows_takes_whole_documents_of_one_split(tiny_store):
    _, store = tiny_store
    rows = pick_rows(store, "heldout", 100, seed=0)
    assert ((rows >= store.n_train) & (rows < store.n_train + store.n_heldout)).all()
    docs = set(np.asarray(store.doc_index[rows]).tolist())
    held_docs = np.asarray(store.doc_index[store.heldout])
    assert len(rows) == int(np.isin(held_docs, list(docs)).sum())  # every held-out row of those documents
    assert len(rows) >= 100 or len(docs) == len(set(held_docs.tolist()))
    assert (pick_rows(store, "train", 50, seed=0) < store.n_train).all()


def test_replaying_the_base_model_reproduces_its_store(tiny_store, tmp_path):
    model, store = tiny_store
    rows = np.concatenate([pick_rows(store, "train", 40, seed=1), pick_rows(store, "heldout", 40, seed=1)])
    replayed = ReplayedRows(replay_rows(model, store, rows, tmp_path / "r", batch_size=3))
    copied = ReplayedRows(copy_rows(store, rows, (tmp_path / "c")))
    assert torch.allclose(replayed.acts(), copied.acts(), rtol=1e-4, atol=1e-5)
    assert (replayed.rows == rows).all()


def test_a_fine_tune_at_a_vanishing_lr_returns_the_base_sae_and_is_deterministic(tiny_store, tmp_path):
    from saes.config import SAEConfig
    from saes.finetune import finetune_sae
    from saes.score import load_sae
    from saes.train import train_sae

    _, store = tiny_store
    cfg = SAEConfig(expansion=2, k=4, training_tokens=1024, batch_size=64)
    base = train_sae(store.path, cfg, tmp_path / "base", seed=0, keep_training_state=True)
    x = store.rows(slice(0, store.n_train))
    still = load_sae(finetune_sae(base, cfg.model_copy(update={"lr": 1e-12}), x, tmp_path / "still", seed=0))
    ref = load_sae(base)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(still, name), getattr(ref, name), rtol=1e-4, atol=1e-6), name
    a = load_sae(finetune_sae(base, cfg, x, tmp_path / "a", seed=3))
    b = load_sae(finetune_sae(base, cfg, x, tmp_path / "b", seed=3))
    assert torch.equal(a.W_dec, b.W_dec)
    assert not torch.allclose(a.W_dec, ref.W_dec)


def test_the_fine_tune_takes_its_own_lr_and_dead_feature_window():
    from saes.base_config import BaseSAEConfig
    from saes.config import SAEConfig

    base = SAEConfig(expansion=2, k=4, training_tokens=4096, batch_size=64, dead_feature_window=20, lr=2e-3)
    same = BaseSAEConfig(sae=base, finetune_rows=256, finetune_tokens=1024).finetune_config()
    assert (same.lr, same.dead_feature_window, same.training_tokens) == (2e-3, 20, 1024)
    own = BaseSAEConfig(
        sae=base, finetune_rows=256, finetune_tokens=1024, finetune_lr=3e-4, finetune_dead_feature_window=4
    ).finetune_config()
    assert (own.lr, own.dead_feature_window, own.n_steps) == (3e-4, 4, 16)  # AuxK can engage within 16 steps
    assert own.model_copy(update={"lr": 2e-3, "dead_feature_window": 20}) == same
    with pytest.raises(ValueError, match="finetune_dead_feature_window"):
        BaseSAEConfig(sae=base, finetune_rows=256, finetune_tokens=1024, finetune_dead_feature_window=0)


# ----- the smoke suite end to end -----------------------------------------------------------------------


def test_one_base_sae_serves_every_task_and_method(smoke_run):
    built = [p.name.split("-")[0] for p in (smoke_run / "runs").iterdir()]
    tasks = {json.loads(p.read_text())["task"] for p in (smoke_run / "jobs").glob("*.json")}
    assert len(tasks) == 3
    for shared in ("corpus_acts", "base_sae", "ft_base"):
        assert built.count(shared) == 1, shared  # once per (model, hook, layer, config), not per task
    assert built.count("concept_latents") == len(tasks)


def test_transfer_and_drift_columns_are_filled_and_zero_for_the_base_model(smoke_run):
    board = pd.read_csv(smoke_run / "leaderboard.csv")
    cols = [
        "sae_transfer_explained_variance",
        "sae_transfer_freq_changed",
        "sae_drift_frac",
        "sae_ft_explained_variance",
    ]
    assert board[cols].notna().all().all()
    base = board[board["method"] == "base"]
    assert (base["sae_drift_frac"] == 0).all() and (base["sae_transfer_freq_changed"] == 0).all()
    assert base["sae_transfer_ev_drop"].abs().max() < 1e-6
    trained = board[board["method"].isin(["dpo", "decpo"])]
    assert (trained["sae_drift_decoder"] > 0).all()  # a trained model moves its fine-tune, however little
