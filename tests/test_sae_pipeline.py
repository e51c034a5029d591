"""Activation store → SAELens training → held-out scores, on the tiny Llama (no hub, no MiniLM)."""

import copy
import json
import math
import random
import typing

import numpy as np
import pytest
import torch
from conftest import _tiny

from bench.core.errors import NonFiniteActivationsError, StoreError
from bench.core.lm import decoder_layers
from saes.activations import ActivationStore, collect_activations, verify_store
from saes.config import Architecture, SAEConfig
from saes.eval_output import HEADLINE_KEYS, SAEEvalOutput
from saes.score import Concepts, score_sae
from saes.train import train_sae

WORDS = (
    "the a cat dog runs jumps quickly slowly over under house tree river blue red happy sad "
    "green small large old new bird fish swims flies"
).split()
CFG = SAEConfig(expansion=2, k=8, training_tokens=2048, batch_size=128, context_length=24, heldout_frac=0.25)
CHAT_CFG = CFG.model_copy(update={"use_chat_template": True})
BF16_CFG = CFG.model_copy(update={"store_dtype": "bfloat16"})


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(n)]


class CountingEmbed:
    """Deterministic stand-in for MiniLM: a seeded random unit vector per distinct context string."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        rows = [np.random.default_rng(sum(map(ord, t)) * 7919 + len(t)).normal(size=16) for t in texts]
        return np.stack(rows).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model, tok = _tiny()
    root = tmp_path_factory.mktemp("sae")
    store = collect_activations(
        model, tok, _texts(24), layer=1, hook="mlp.up_proj", out_dir=root / "store", cfg=CFG, seed=0
    )
    sae_dir = train_sae(store, CFG, root / "sae", seed=0)
    return model, tok, store, sae_dir


def test_collection_stops_after_the_hooked_module(tiny_lm, tmp_path):
    model, tok = tiny_lm
    called = []
    decoder_layers(model)[1].register_forward_hook(lambda *a: called.append("layer1"))
    model.lm_head.register_forward_hook(lambda *a: called.append("lm_head"))
    collect_activations(model, tok, _texts(6), layer=0, hook="mlp.up_proj", out_dir=tmp_path / "s", cfg=CFG)
    assert called == []


def test_store_layout_and_split_by_document(built):
    model, tok, path, _ = built
    store = ActivationStore(path)
    m = store.manifest
    assert m["d_in"] == 128 and m["request"]["hook_name"] == "model.layers.1.mlp.up_proj"
    assert m["n_tokens"] == m["n_train_tokens"] + m["n_heldout_tokens"] + m["n_duplicate_tokens"] == store.acts.shape[0]
    docs = np.asarray(store.doc_index)
    train_docs, held_docs = set(docs[: store.n_train]), set(docs[store.heldout])
    assert not train_docs & held_docs and len(held_docs) == 6
    assert set(np.flatnonzero(store.doc_split == 1)) == held_docs
    specials = set(tok.all_special_ids)
    for row in range(0, store.acts.shape[0], 37):  # stored ids are the documents' real tokens
        d, p = int(store.doc_index[row]), int(store.positions[row])
        assert store.doc(d)[p] == int(store.token_ids[row]) and int(store.token_ids[row]) not in specials
    verify_store(store, model)  # padding did not change the activations


def test_split_is_seeded_and_keeps_groups_whole():
    from saes.heldout import split_groups

    groups = [f"g{i // 3}" for i in range(60)]
    a, b = split_groups(groups, 0.2, 3), split_groups(groups, 0.2, 4)
    assert (a == split_groups(groups, 0.2, 3)).all() and not (a == b).all()
    assert a.sum() == 12 and all(len({a[i] for i in range(g * 3, g * 3 + 3)}) == 1 for g in range(20))
    with pytest.raises(ValueError, match="at least 2 item groups"):
        split_groups(["x"] * 5, 0.2, 0)


def test_shared_prompts_leak_nothing_into_the_heldout_split(tiny_lm, tmp_path):
    """prompt + chosen, prompt + rejected and a concept text per prompt, every prompt opening with the same
    instruction: no held-out token shares its prefix with a training token or with another held-out one."""
    from saes.heldout import audit_store

    model, tok = tiny_lm
    rng = random.Random(0)
    texts, groups = [], []
    for item in range(30):
        prompt = "Rewrite this thought more hopefully: " + " ".join(rng.choice(WORDS) for _ in range(8))
        for reply in ("good " + rng.choice(WORDS), "bad " + rng.choice(WORDS), ""):
            texts.append(f"{prompt}\n{reply}".strip())
            groups.append(f"item{item}")
    texts.append(texts[0])  # an exact repeat: one activation, counted once
    groups.append("item0")
    store = ActivationStore(
        collect_activations(model, tok, texts, groups=groups, layer=1, out_dir=tmp_path / "s", cfg=CFG, seed=0)
    )
    audit = audit_store(store)
    assert audit["leaks"] == audit["short_shared"] == audit["twins"] == 0 and audit["heldout_tokens"] > 0
    split = store.doc_split
    assert all(len({split[i] for i, g in enumerate(groups) if g == name}) == 1 for name in set(groups))
    assert store.manifest["n_duplicate_tokens"] > 0  # the shared instruction is stored once


def test_store_from_another_model_is_refused(built, tmp_path):
    _, tok, path, _ = built
    from bench.models import TinySpec, load_model

    other, _ = load_model("tiny:llama", seed=1, tiny=TinySpec())
    with pytest.raises(StoreError, match="another model"):
        verify_store(ActivationStore(path), other)
    with pytest.raises(StoreError, match="different request"):
        collect_activations(other, tok, _texts(10), layer=1, hook="mlp.up_proj", out_dir=path, cfg=CFG)


def test_nan_activations_raise(tiny_lm, tmp_path):
    model, tok = tiny_lm
    with torch.no_grad():
        decoder_layers(model)[0].mlp.up_proj.weight[3, 0] = math.nan
    with pytest.raises(NonFiniteActivationsError, match="NaN/inf"):
        collect_activations(model, tok, _texts(6), layer=0, hook="mlp.up_proj", out_dir=tmp_path / "s", cfg=CFG)
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_chat_template_prefix_is_not_stored(tiny_lm, tmp_path):
    model, tok = tiny_lm
    path = collect_activations(
        model,
        tok,
        _texts(6),
        layer=0,
        hook="mlp.up_proj",
        out_dir=tmp_path / "s",
        cfg=CFG.model_copy(update={"use_chat_template": True}),
    )
    store = ActivationStore(path)
    starts = store.manifest["content_start"]
    assert min(starts) > 10  # the template's system turn
    rows = np.arange(store.acts.shape[0])
    assert all(int(store.positions[r]) >= starts[int(store.doc_index[r])] for r in rows)
    assert max(np.bincount(np.asarray(store.doc_index))) <= CFG.context_length


@pytest.mark.parametrize("arch", typing.get_args(Architecture))
def test_every_architecture_trains_and_loads(built, arch, tmp_path):
    from sae_lens import SAE

    store = built[2]
    cfg = SAEConfig(architecture=arch, expansion=2, training_tokens=512, batch_size=128)
    out = train_sae(store, cfg, tmp_path / arch, seed=0)
    sae = SAE.load_from_disk(out)
    assert sae.cfg.d_sae == 256 and sae.cfg.d_in == 128
    assert sae.cfg.architecture() == ("jumprelu" if "batchtopk" in arch else arch)
    assert json.loads((out / "training.json").read_text())["n_steps"] == 4
    x = ActivationStore(store).heldout_acts()[:10]
    assert torch.isfinite(sae.decode(sae.encode(x))).all()


def test_training_is_deterministic(built, tmp_path):
    from safetensors.torch import load_file

    store = built[2]
    cfg = SAEConfig(expansion=2, k=8, training_tokens=512, batch_size=128)
    a = load_file(train_sae(store, cfg, tmp_path / "a", seed=5) / "sae_weights.safetensors")
    b = load_file(train_sae(store, cfg, tmp_path / "b", seed=5) / "sae_weights.safetensors")
    c = load_file(train_sae(store, cfg, tmp_path / "c", seed=6) / "sae_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_enc"], c["W_enc"])


def test_score_writes_saebench_layout_and_headline(built, tmp_path):
    model, tok, store, sae_dir = built
    embed = CountingEmbed()
    texts = _texts(20, seed=9)
    labels = [int("cat" in t.split()[:5]) for t in texts]
    kw = dict(
        layer=1,
        hook="mlp.up_proj",
        concepts=Concepts(texts, labels),
        cfg=CFG,
        embed_fn=embed,
        embed_cache_dir=tmp_path / "emb",
    )
    head = score_sae(sae_dir, store, model, tok, out_dir=tmp_path, **kw)
    assert tuple(head) == HEADLINE_KEYS
    undefined = {k for k, v in head.items() if not math.isfinite(v)}
    assert undefined <= {"sae_ce_score"} and (not undefined or abs(head["sae_ce_gap"]) < CFG.eval.ce_min_gap), head
    assert 0 < head["sae_n_alive"] <= 256 and head["sae_l0"] == pytest.approx(8.0)
    out = SAEEvalOutput.model_validate_json((tmp_path / "eval_results.json").read_text())
    assert out.eval_type_id == "monobench_sae" and out.sae_cfg_dict["architecture"] == "topk"
    assert len(out.eval_result_details) == 256
    assert sum(d.ms_score is not None for d in out.eval_result_details) <= head["sae_n_alive"]
    raw = json.loads((tmp_path / "eval_results.json").read_text())
    assert {
        "eval_type_id",
        "eval_config",
        "eval_id",
        "datetime_epoch_millis",
        "eval_result_metrics",
        "eval_result_details",
        "sae_bench_commit_hash",
        "sae_lens_version",
        "sae_cfg_dict",
    } <= raw.keys()
    again = score_sae(sae_dir, store, model, tok, out_dir=tmp_path / "2", **kw)  # embeddings come from the cache
    assert embed.calls == 1 and again == head


def test_peft_wrapped_model(built, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok, store, _ = built
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["up_proj", "q_proj"]))
    verify_store(ActivationStore(store), peft_model)  # LoRA B = 0: same activations as the base
    path = collect_activations(peft_model, tok, _texts(8), layer=1, hook="mlp.up_proj", out_dir=tmp_path / "s", cfg=CFG)
    assert ActivationStore(path).manifest["request"]["hook_name"] == "model.layers.1.mlp.up_proj"


def test_show_feature(built, tmp_path):
    from saes.show import format_feature

    _, tok, store, sae_dir = built
    text = format_feature(sae_dir, store, tok, 0, n=3)
    assert text.startswith("feature 0 of 256") and "density" in text
    assert "«" in text or "never active" in text
    with pytest.raises(ValueError, match="out of range"):
        format_feature(sae_dir, store, tok, 999)


def test_show_feature_from_the_run_folder_alone(built, tmp_path):
    from saes.show import show_feature

    model, tok, store, sae_dir = built
    score_sae(
        sae_dir,
        store,
        model,
        tok,
        layer=1,
        hook="mlp.up_proj",
        cfg=CFG,
        out_dir=tmp_path,
        embed_fn=CountingEmbed(),
        embed_cache_dir=tmp_path / "emb",
    )
    (tmp_path / "sae").symlink_to(sae_dir)  # the runner's layout: <stage>/sae + eval_results.json
    text = show_feature(tmp_path, 1, n=2)
    assert text.startswith("feature 1 of 256") and "MS " in text


def test_agrees_with_sae_lens_evals(built):
    from saes.crosscheck import compare_with_sae_lens
    from saes.score import load_sae

    model, tok, store, sae_dir = built
    res = compare_with_sae_lens(load_sae(sae_dir), model, tok, ActivationStore(store))
    assert res["explained_variance"][0] == pytest.approx(res["explained_variance"][1], abs=1e-4)
    assert res["mse"][0] == pytest.approx(res["mse"][1], rel=1e-4)
    assert res["l0"][0] == pytest.approx(res["l0"][1], abs=1e-6)
    assert res["dead_frac"][0] == res["dead_frac"][1]
    for name in ("ce_clean", "ce_sae", "ce_zero_ablation"):
        assert res[name][0] == pytest.approx(res[name][1], abs=1e-4)
    gap = res["ce_zero_ablation"][1] - res["ce_clean"][1]  # the score's error is ~ CE error / gap
    assert res["ce_score"][0] == pytest.approx(res["ce_score"][1], abs=1e-4 / max(abs(gap), 1e-6) + 1e-3)


def test_bfloat16_store_reads_back_as_float32(built, tmp_path):
    model, tok, path, _ = built
    texts = _texts(24)
    bf = collect_activations(
        model,
        tok,
        texts,
        layer=1,
        hook="mlp.up_proj",
        out_dir=tmp_path / "bf",
        cfg=CFG.model_copy(update={"store_dtype": "bfloat16"}),
    )
    a, b = ActivationStore(path).heldout_acts(), ActivationStore(bf).heldout_acts()
    assert b.dtype == torch.float32 and a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-2)
    assert (tmp_path / "bf" / "acts.npy").stat().st_size < (path / "acts.npy").stat().st_size * 0.6


@pytest.mark.parametrize("wrap", [False, True])
def test_ce_shared_prefix_equals_three_full_forwards(built, wrap):
    """The spliced and zero-ablated forwards resume at the hooked block from the clean forward's input to it:
    the same three losses as three full forwards, and every block is back in place afterwards."""
    from peft import LoraConfig, get_peft_model

    from saes.ce import ce_losses
    from saes.score import load_sae

    model, _, store, sae_dir = built
    if wrap:  # a trained-looking adapter (B ≠ 0) on blocks below and above the hook
        model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["up_proj", "q_proj"]))
        torch.manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.05)
    blocks = list(decoder_layers(model))
    sae = load_sae(sae_dir)
    st = ActivationStore(store)
    shared = ce_losses(model, st, sae, layer=1, hook="mlp.up_proj", batch_size=4)
    full = ce_losses(model, st, sae, layer=1, hook="mlp.up_proj", batch_size=4, share_prefix=False)
    assert shared[3] == full[3] and np.allclose(shared[:3], full[:3], rtol=0, atol=1e-6), (shared, full)
    assert shared[1] != shared[0] and shared[2] != shared[0]  # the splices changed the loss
    assert all(a is b for a, b in zip(decoder_layers(model), blocks))


def test_probe_latents_of_stored_texts_come_from_the_store(built):
    """Texts the store holds are pooled from its rows (no forward); the result is the forward's."""
    from saes.probe import pooled_latents
    from saes.score import load_sae

    model, tok, path, sae_dir = built
    store, sae = ActivationStore(path), load_sae(sae_dir)
    texts = _texts(24)[::3] + _texts(3, seed=9) + _texts(24)[:1]  # 8 stored texts, 3 new ones, a repeat
    kw = dict(
        layer=1,
        hook="mlp.up_proj",
        max_length=CFG.context_length,
        batch_size=4,
        use_chat_template=False,
        special_ids=store.manifest["special_ids"],
    )
    rows_run = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, i, o: rows_run.append(i[0].shape[0]))
    try:
        from_store = pooled_latents(model, tok, sae, texts, store=store, **kw)
        assert sum(rows_run) == 3, "only the 3 texts the store lacks are run through the model"
        rows_run.clear()
        forward = pooled_latents(model, tok, sae, texts, **kw)
        assert sum(rows_run) == len(texts)
    finally:
        handle.remove()
    assert from_store.shape == (12, sae.cfg.d_sae) and (from_store[:8] != 0).any(1).all()
    assert torch.allclose(from_store, forward, atol=1e-5) and torch.equal(from_store[0], from_store[-1])
    # a different truncation gives different tokens, so nothing matches the store
    rows_run.clear()
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, i, o: rows_run.append(i[0].shape[0]))
    try:
        pooled_latents(model, tok, sae, texts[:2], store=store, **{**kw, "max_length": 10})
    finally:
        handle.remove()
    assert sum(rows_run) == 2


def test_probe_refuses_labels_that_truncation_makes_identical(built, tmp_path):
    """Texts that differ only after probe_max_length tokens would pool to the same features."""
    from saes.probe import check_probe_texts

    model, tok, store, sae_dir = built
    stem = " ".join(["word"] * 30)
    texts, labels = [stem + " yes", stem + " no", "short one", "short two"], [1, 0, 1, 0]
    check_probe_texts(tok, texts, labels, max_length=40, use_chat_template=False)
    with pytest.raises(ValueError, match=r"1 concept texts have the same first 16 tokens.*to \d+"):
        check_probe_texts(tok, texts, labels, max_length=16, use_chat_template=False)
    with pytest.raises(ValueError, match="probe cannot separate them"):
        score_sae(
            sae_dir,
            store,
            model,
            tok,
            layer=1,
            hook="mlp.up_proj",
            concepts=Concepts(texts, labels),
            cfg=CFG.model_copy(update={"eval": CFG.eval.model_copy(update={"probe_max_length": 16})}),
            out_dir=tmp_path,
            embed_fn=CountingEmbed(),
            embed_cache_dir=tmp_path / "emb",
        )


def test_grouped_probe_split_keeps_groups_whole():
    """Twins (same features, opposite labels) across a per-text split push the probe below chance;
    split by group, each test twin pair is predicted alike, so accuracy is exactly 0.5."""
    from saes.probe import probe_scores

    rng = np.random.default_rng(0)
    twins = torch.from_numpy(rng.normal(size=(30, 8))).float()
    feats = twins.repeat_interleave(2, 0)  # text 2g and 2g+1 share group g's features
    labels = [1, 0] * 30
    groups = [f"g{i // 2}" for i in range(60)]
    grouped = probe_scores(feats, labels, test_frac=0.3, seed=0, groups=groups)
    assert grouped == (0.5, 0.5)
    assert all(acc < 0.5 for acc in probe_scores(feats, labels, test_frac=0.3, seed=0))
    with pytest.raises(ValueError, match="59 concept groups for 60"):
        probe_scores(feats, labels, test_frac=0.3, seed=0, groups=groups[:59])


def test_ce_max_docs_zero_skips_the_ce_score_and_keeps_the_rest(built, tmp_path):
    """``ce_max_docs = 0`` (the ``default`` suite): no CE forward, the three ``sae_ce_*`` columns undefined,
    every other score the same as with CE."""
    model, tok, store, sae_dir = built
    kw = dict(layer=1, hook="mlp.up_proj", embed_fn=CountingEmbed(), embed_cache_dir=tmp_path / "emb")
    with_ce = score_sae(sae_dir, store, model, tok, out_dir=tmp_path / "a", cfg=CFG.eval, **kw)
    no_ce_cfg = CFG.eval.model_copy(update={"ce_max_docs": 0})
    no_ce = score_sae(sae_dir, store, model, tok, out_dir=tmp_path / "b", cfg=no_ce_cfg, **kw)
    ce_keys = {"sae_ce_score", "sae_ce_delta", "sae_ce_gap"}
    assert all(math.isnan(no_ce[k]) for k in ce_keys) and math.isfinite(with_ce["sae_ce_delta"])
    assert {k: v for k, v in no_ce.items() if k not in ce_keys} == {
        k: v for k, v in with_ce.items() if k not in ce_keys
    }
    out = SAEEvalOutput.model_validate_json((tmp_path / "b" / "eval_results.json").read_text())
    assert out.eval_result_metrics.model_performance_preservation.n_tokens == 0
