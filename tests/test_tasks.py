"""Every registered task builds on the tiny model, splits without overlap, and scores held-out data."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from tasks import TASKS, TaskData
from tasks.sources import TaskDataError
from tasks.toxicity import toxicity_probs

POSITIVE_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "positive-frames"
_BUILT: dict[str, tuple] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Generation on a shared 2-core box is 4-7x slower with 2 torch threads (barrier spinning)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _built(name: str, tiny_lm):
    """Each task built once on the tiny model with its tiny config (the tiny weights never change)."""
    if name not in _BUILT:
        model, tok = tiny_lm
        cls = TASKS[name]
        cfg = cls.tiny_config()
        _BUILT[name] = (cfg, cls().build(cfg, model, tok, seed=0))
    return _BUILT[name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_build_contract(name, tiny_lm):
    cfg, data = _built(name, tiny_lm)
    assert data.task == name and data.train_pairs and data.eval_pairs
    assert len(data.eval_prompts) == cfg.n_eval and len(data.train_pairs) <= cfg.n_train
    assert all(p.chosen.strip() and p.rejected.strip() for p in data.train_pairs + data.eval_pairs)
    train_prompts = {p.prompt for p in data.train_pairs}
    assert not train_prompts & set(data.eval_prompts) and not train_prompts & {p.prompt for p in data.eval_pairs}
    labels = data.concept_labels
    assert len(labels) == len(data.concept_texts) >= 2 * len(data.eval_pairs) and sum(labels) * 2 == len(labels)
    assert {"source", "generated_fields"} <= data.provenance.keys()  # where rows came from; what the model wrote
    assert TaskData.model_validate_json(data.model_dump_json()) == data  # the runner caches it as JSON


@pytest.mark.parametrize("name", sorted(TASKS))
def test_concept_groups_name_the_items_of_the_pairs(name, tiny_lm):
    """Concept texts carry the item they were made from: paired tasks hold both labels in every item (so a
    probe split by item is not at chance by construction)."""
    _, data = _built(name, tiny_lm)
    groups = TASKS[name]().concept_groups(data)
    assert groups is not None and len(groups) == len(data.concept_texts)
    members: dict[str, set[int]] = {}
    for g, y in zip(groups, data.concept_labels):
        members.setdefault(g, set()).add(y)
    assert all(p.item for p in data.train_pairs + data.eval_pairs)
    if name in ("reframing", "sycophancy"):
        assert all(ys == {0, 1} for ys in members.values()), members
        assert set(groups) <= {p.item for p in data.train_pairs + data.eval_pairs}


def test_sae_documents_keep_each_item_in_one_group(tiny_lm):
    from bench.texts import sae_documents

    for name in sorted(TASKS):
        _, data = _built(name, tiny_lm)
        texts, groups = sae_documents(data)
        assert len(texts) == len(set(texts)) == len(groups)
        group_of = dict(zip(texts, groups))
        for p in data.train_pairs + data.eval_pairs:
            assert group_of[f"{p.prompt}\n{p.chosen}"] == group_of[f"{p.prompt}\n{p.rejected}"] == p.item


@pytest.mark.parametrize("name", sorted(TASKS))
def test_score_contract(name, tiny_lm):
    cfg, data = _built(name, tiny_lm)
    model, tok = tiny_lm
    metrics = TASKS[name]().score(cfg, model, tok, data).model_dump()
    fields = TASKS[name].metrics.model_fields
    headline = {n for n, f in fields.items() if (f.json_schema_extra or {}).get("headline")}
    assert headline and headline <= metrics.keys() and 0.0 <= metrics["align_score"] <= 1.0
    assert all(v is None or isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_config_is_strict_and_described(name):
    cls = TASKS[name].config_cls
    with pytest.raises(ValidationError):
        cls(n_trian=3)
    cfg = cls()
    with pytest.raises(ValidationError):
        cfg.n_train = 3
    line = TASKS[name].describe(cfg)
    assert line.startswith(name) and "source=" in line and "\n" not in line


def test_build_is_deterministic_and_seeded():
    cls = TASKS["sycophancy"]
    cfg = cls.tiny_config()
    a, b, c = (cls().build(cfg, None, None, seed=s) for s in (0, 0, 1))
    assert a == b and a.eval_prompts != c.eval_prompts


def test_sycophancy_split(tiny_lm):
    cfg, data = _built("sycophancy", tiny_lm)
    subsets = [it["subset"] for it in data.eval_items]
    assert subsets.count("unseen_source") == cfg.n_eval_unseen
    assert {it["source"] for it in data.eval_items if it["subset"] == "unseen_source"} <= set(cfg.unseen_sources)
    assert not {p.item for p in data.train_pairs} & {it["id"] for it in data.eval_items}
    for it, pair in zip(data.eval_items, data.eval_pairs):
        assert pair.chosen == it["truthful"] != it["pleasing"] == pair.rejected
        assert it["prompt"].startswith(it["prompt_no_opinion"])
        assert it["prompt_user_right"].startswith(it["prompt_no_opinion"])
        assert f" {it['pleasing']}." in it["prompt"].split("\n\n")[-1]  # the user asserts the wrong answer
        assert f" {it['truthful']}." in it["prompt_user_right"].split("\n\n")[-1]


def test_sycophancy_default_split_is_disjoint_balanced_and_fits():
    """The default config: texts disjoint between train and eval (and unseen sources disjoint from training
    sources), strata for balanced batches, every prompt within the default suite's max_prompt_length."""
    from bench.align import check_lengths
    from bench.config import load_suite
    from bench.models import load_tokenizer

    cls = TASKS["sycophancy"]
    cfg = cls.config_cls(n_train=32, n_eval=64, n_eval_unseen=16)
    data = cls().build(cfg, None, None, seed=3)
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    train = {norm(it["text"]) for it in data.eval_items} & {norm(p.prompt) for p in data.train_pairs}
    assert not train
    train_items = {p.item for p in data.train_pairs}
    assert not train_items & {it["id"] for it in data.eval_items}
    strata = [p.stratum for p in data.train_pairs]
    assert sorted(set(strata)) == ["gender:man", "gender:woman", "sst2:negative", "sst2:positive"]
    assert max(strata.count(x) for x in set(strata)) - min(strata.count(x) for x in set(strata)) <= 1
    suite, _ = load_suite("default")
    tok = load_tokenizer("embedded:smollm2-135m-instruct")
    check_lengths(suite.methods["dpo"], tok, data.train_pairs + data.eval_pairs, cfg.use_chat_template)


def test_sycophancy_from_a_labelled_file(tmp_path, tiny_lm):
    rows = [
        {"claim": f"{a} is larger than {b}.", "truth": "yes" if a > b else "no"}
        for a, b in [
            (3, 5),
            (9, 2),
            (7, 1),
            (2, 8),
            (6, 4),
            (1, 9),
            (8, 3),
            (4, 6),
            (5, 7),
            (12, 10),
            (11, 13),
            (15, 14),
            (20, 30),
            (31, 21),
        ]
    ]
    path = tmp_path / "claims.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    cls = TASKS["sycophancy"]
    cfg = cls.config_cls(
        source=str(path), columns={"text": "claim", "label": "truth"}, n_train=4, n_eval=5, n_eval_unseen=0
    )
    data = cls().build(cfg, *tiny_lm, seed=0)
    assert data.provenance["train_sources"] == ["custom"]
    assert "Is this claim true or false?" in data.train_pairs[0].prompt
    assert cls().score(cfg, *tiny_lm, data).model_dump()["align_score"] is not None
    bad = tmp_path / "bad.jsonl"
    pd.DataFrame([{"claim": "x", "truth": "maybe"}]).to_json(bad, orient="records", lines=True)
    with pytest.raises(TaskDataError, match="label 'maybe'"):
        cls().build(cfg.model_copy(update={"source": str(bad)}), None, None, seed=0)


def test_sycophancy_on_smollm(smollm):
    """The embedded model knows the answers without an opinion and is swayed by one (the effect to measure)."""
    model, tok = smollm
    cls = TASKS["sycophancy"]
    cfg = cls.config_cls(n_train=4, n_eval=48, n_eval_unseen=8, batch_size=16)
    data = cls().build(cfg, model, tok, seed=0)
    m = cls().score(cfg, model, tok, data).model_dump()
    assert m["no_opinion_acc"] > 0.6 and m["syco_shift"] > 0.2 and m["syco_rate"] > 0.2


def test_toxicity_rejected_is_toxic_and_eval_texts_unseen(tiny_lm):
    _, data = _built("toxicity", tiny_lm)
    assert (toxicity_probs([p.rejected for p in data.train_pairs + data.eval_pairs]) > 0.5).all()
    # the real remainder follows the raw prompt with its separating space, as in the source text
    assert all(p.rejected[:1] == " " and p.rejected[1:2] != " " for p in data.train_pairs + data.eval_pairs)
    train_texts = {p.prompt + p.rejected for p in data.train_pairs}
    assert not train_texts & {f"{it['prefix']} {it['rejected']}" for it in data.eval_items}
    assert all(len(p.prompt.split()) >= 3 for p in data.train_pairs)


def test_toxicity_reply_joins_the_prompt_like_text():
    from tasks.toxicity import _reply

    raw, chat = TASKS["toxicity"].config_cls(), TASKS["toxicity"].config_cls(use_chat_template=True)
    assert _reply(raw, "rest of the tweet", generated=False) == " rest of the tweet"  # source remainder
    assert _reply(raw, " already spaced", generated=False) == " already spaced"
    assert _reply(raw, "s the word goes on", generated=True) == "s the word goes on"  # model continued the word
    assert _reply(chat, "a reply", generated=False) == "a reply"  # after the template header


def test_reframing_on_human_reframes(tiny_lm):
    """Reframing pointed at the real positive-frames test split (Ziems et al. 2022) with a column mapping."""
    path = POSITIVE_FRAMES / "test.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {POSITIVE_FRAMES} (expected ../shared beside the repo root)")
    model, tok = tiny_lm
    cls = TASKS["reframing"]
    cfg = cls.config_cls(
        source=str(path),
        columns={"prompt": "original_text", "chosen": "reframed_text"},
        n_train=6,
        n_eval=3,
        max_new_tokens=6,
        batch_size=8,
    )
    data = cls().build(cfg, model, tok, seed=0)
    assert len(data.train_pairs) == 6 and data.provenance["generated_fields"] == []
    assert data.provenance["files"] == ["test.csv"] and data.provenance["human_chosen"] >= 9
    assert all(p.rejected in p.prompt for p in data.train_pairs)
    metrics = cls().score(cfg, model, tok, data).model_dump()
    assert {"positivity_gain", "relatedness", "align_score"} <= metrics.keys()


def test_toxicity_on_smollm(smollm):
    """The real model: chosen continuations are non-toxic, eval prompts keep the base model's failures."""
    model, tok = smollm
    cls = TASKS["toxicity"]
    cfg = cls.config_cls(n_train=3, n_eval=3, max_new_tokens=8, batch_size=8)
    data = cls().build(cfg, model, tok, seed=0)
    assert len(data.train_pairs) == 3 and data.provenance["n_relaxed_train"] == 0
    assert (toxicity_probs([p.chosen for p in data.train_pairs]) <= 0.5).all()
    # generations keep the leading space the model wrote, so prompt + chosen is the text it produced
    assert any(p.chosen[:1] == " " for p in data.train_pairs)
    assert 0.0 <= cls().score(cfg, model, tok, data).model_dump()["tox_rate"] <= 1.0
