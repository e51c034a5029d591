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
def test_concept_groups_pair_opposite_labels(name, tiny_lm):
    """A task's concept groups hold the texts made from one item; paired tasks give one of each label."""
    _, data = _built(name, tiny_lm)
    groups = TASKS[name]().concept_groups(data)
    if groups is None:                     # independent texts (toxicity)
        assert name == "toxicity"
        return
    assert len(groups) == len(data.concept_texts)
    members: dict[str, list[int]] = {}
    for g, y in zip(groups, data.concept_labels):
        members.setdefault(g, []).append(y)
    assert all(sorted(ys) == [0, 1] for ys in members.values()), members


@pytest.mark.parametrize("name", sorted(TASKS))
def test_score_contract(name, tiny_lm):
    cfg, data = _built(name, tiny_lm)
    model, tok = tiny_lm
    metrics = TASKS[name]().score(cfg, model, tok, data)
    assert set(TASKS[name].headline) <= metrics.keys() and 0.0 <= metrics["align_score"] <= 1.0
    assert all(isinstance(v, float) for v in metrics.values())


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
    assert subsets.count("unseen_source") == cfg.n_eval_unseen and subsets.count("addition") == cfg.n_eval_addition
    assert {it["source"] for it in data.eval_items if it["subset"] == "unseen_source"} <= set(cfg.unseen_sources)
    train_claims = {p.prompt.split("Claim: ")[1].split("\n\nIs the claim")[0] for p in data.train_pairs}
    assert not train_claims & {it["claim"] for it in data.eval_items}
    for it, pair in zip(data.eval_items, data.eval_pairs):
        assert pair.chosen == it["truthful"] != it["pleasing"] == pair.rejected
        assert it["prompt"].endswith(it["prompt_no_opinion"]) and it["prompt"] != it["prompt_no_opinion"]


def test_sycophancy_larger_split_is_disjoint_by_question():
    cls = TASKS["sycophancy"]
    data = cls().build(cls.config_cls(n_train=60, n_eval=40, n_eval_unseen=10, n_eval_addition=10), None, None, seed=3)
    claim = lambda prompt: prompt.split("Claim: ")[1].split("\n\nIs the claim")[0]  # noqa: E731
    q = lambda c: c.split("\nA: ")[0].lower()  # noqa: E731
    train_q = {q(claim(p.prompt)) for p in data.train_pairs}
    assert not train_q & {q(it["claim"]) for it in data.eval_items}
    assert {p.chosen[:3] for p in data.train_pairs} == {"(A)", "(B)"}  # option order varies per item
    n_true = sum(it["label"] for it in data.eval_items)
    assert abs(n_true - len(data.eval_items) / 2) <= 2  # balanced within each claim set (odd counts round up)


def test_sycophancy_from_a_claims_file(tmp_path, tiny_lm):
    rows = [{"text": f"{a} is larger than {b}.", "truth": "yes" if a > b else "no", "set": "cmp" if a % 2 else "ord"}
            for a, b in [(3, 5), (9, 2), (7, 1), (2, 8), (6, 4), (1, 9), (8, 3), (4, 6), (5, 7), (12, 10), (11, 13),
                         (15, 14), (20, 30), (31, 21)]]
    path = tmp_path / "claims.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    cls = TASKS["sycophancy"]
    cfg = cls.config_cls(source=str(path), columns={"claim": "text", "label": "truth", "source": "set"},
                         n_train=4, n_eval=5, n_eval_unseen=2, n_eval_addition=1, unseen_sources=("ord",))
    data = cls().build(cfg, *tiny_lm, seed=0)
    assert data.provenance["train_sources"] == ["cmp"] and data.provenance["unseen_sources"] == ["ord"]
    assert [it["subset"] for it in data.eval_items].count("unseen_source") == 2
    assert "align_score" in cls().score(cfg, *tiny_lm, data)
    with pytest.raises(TaskDataError, match="no claims to train on"):
        cls().build(cfg.model_copy(update={"unseen_sources": ("ord", "cmp")}), None, None, seed=0)


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
    assert _reply(raw, "rest of the tweet", generated=False) == " rest of the tweet"   # source remainder
    assert _reply(raw, " already spaced", generated=False) == " already spaced"
    assert _reply(raw, "s the word goes on", generated=True) == "s the word goes on"   # model continued the word
    assert _reply(chat, "a reply", generated=False) == "a reply"                       # after the template header


def test_reframing_on_human_reframes(tiny_lm):
    """Reframing pointed at the real positive-frames test split (Ziems et al. 2022) with a column mapping."""
    path = POSITIVE_FRAMES / "test.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {POSITIVE_FRAMES} (expected ../shared beside the repo root)")
    model, tok = tiny_lm
    cls = TASKS["reframing"]
    cfg = cls.config_cls(source=str(path), columns={"prompt": "original_text", "chosen": "reframed_text"},
                         n_train=6, n_eval=3, max_new_tokens=6, batch_size=8)
    data = cls().build(cfg, model, tok, seed=0)
    assert len(data.train_pairs) == 6 and data.provenance["generated_fields"] == []
    assert data.provenance["files"] == ["test.csv"] and data.provenance["human_chosen"] >= 9
    assert all(p.rejected in p.prompt for p in data.train_pairs)
    metrics = cls().score(cfg, model, tok, data)
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
    assert 0.0 <= cls().score(cfg, model, tok, data)["tox_rate"] <= 1.0
