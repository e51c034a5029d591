"""Shared reference log-probs (``share_ref_logps``): computed once per distinct row, reused by every
DPO-family method, and equal to TRL's per-step reference up to float rounding."""

import json

import pytest
import torch
from pydantic import ValidationError

from bench.align import train_policy
from bench.core.task import Pair
from bench.methods import METHODS
from bench.ref_logps import RefLogpsMemo, row_key

TRAIN = [Pair(prompt=f"Question {i}: do you agree?", chosen="yes yes", rejected="no no") for i in range(8)]
HELD_OUT = [Pair(prompt=f"Held-out question {i}: agree?", chosen="yes yes", rejected="no no") for i in range(4)]
FAST = dict(max_steps=4, batch_size=4, eval_every=2, curve_pairs=2, curve_prompts=2, lr=5e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(method, tiny_lm, out, memo=None, **cfg):
    model, tok = tiny_lm
    config = METHODS[method].config_cls(**{**FAST, **cfg})
    kw = dict(seed=0, use_chat_template=False, layer=1, ref_memo=memo)
    return train_policy(method, config, model, tok, TRAIN, HELD_OUT, out, **kw)


def _lora(policy):
    return {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}


def test_row_key_is_the_token_ids():
    assert row_key([1, 2], [3], [4]) == row_key((1, 2), (3,), (4,))
    assert row_key([1, 2], [3], [4]) != row_key([1], [2, 3], [4])  # where the prompt ends matters


def test_memo_scopes_do_not_mix(tmp_path):
    a = RefLogpsMemo(tmp_path, "model-a").scoped(max_length=8)
    a.add({"k": [-1.0, -2.0]})
    assert RefLogpsMemo(tmp_path, "model-a").scoped(max_length=8).load() == {"k": [-1.0, -2.0]}
    assert RefLogpsMemo(tmp_path, "model-b").scoped(max_length=8).load() == {}
    assert RefLogpsMemo(tmp_path, "model-a").scoped(max_length=9).load() == {}


def test_shared_reference_is_computed_once_and_trains_like_the_per_step_one(tiny_lm, tmp_path):
    memo = RefLogpsMemo(tmp_path / "memo", "tiny")
    plain = _train("dpo", tiny_lm, tmp_path / "plain")
    shared = _train("dpo", tiny_lm, tmp_path / "shared", memo, share_ref_logps=True)
    # 4 steps × 4 pairs = 16 rows over 8 distinct pairs: each computed once, the repeats reused
    assert (memo.computed, memo.reused) == (8, 8)
    a, b = _lora(plain.policy), _lora(shared.policy)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a), "shared reference must train the same policy"
    for p, s in zip(plain.curves, shared.curves, strict=True):
        assert s["eval/reward_margin"] == pytest.approx(p["eval/reward_margin"], abs=1e-4)
    # another method of the family on the same rows (the A/A control: another order) computes nothing
    for method in ("dpo_aa", "decpo"):
        memo2 = RefLogpsMemo(tmp_path / "memo", "tiny")
        _train(method, tiny_lm, tmp_path / method, memo2, share_ref_logps=True)
        assert (memo2.computed, memo2.reused) == (0, 16), method
    stored = json.loads(next((tmp_path / "memo").glob("*.json")).read_text())
    assert len(stored["rows"]) == 8 and json.loads(stored["scope"])["model"] == "tiny"


def test_a_wrong_stored_value_is_what_training_reads(tiny_lm, tmp_path):
    """Positive control for the memo being read at all: planted reference log-probs change the loss."""
    memo = RefLogpsMemo(tmp_path / "memo", "tiny")
    first = _train("dpo", tiny_lm, tmp_path / "a", memo, share_ref_logps=True)
    path = next((tmp_path / "memo").glob("*.json"))
    stored = json.loads(path.read_text())
    stored["rows"] = {k: [c + 5.0, r] for k, (c, r) in stored["rows"].items()}  # reference prefers chosen by 5 nats
    path.write_text(json.dumps(stored))
    second = _train("dpo", tiny_lm, tmp_path / "b", RefLogpsMemo(tmp_path / "memo", "tiny"), share_ref_logps=True)
    a, b = _lora(first.policy), _lora(second.policy)
    assert not all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_share_ref_logps_is_a_dpo_trainer_option_and_keeps_keys():
    with pytest.raises(ValidationError, match="share_ref_logps"):
        METHODS["kto"].config_cls(share_ref_logps=True)
    with pytest.raises(ValidationError, match="share_ref_logps"):
        METHODS["simpo"].config_cls(share_ref_logps=True)
    assert "share_ref_logps" not in METHODS["dpo"].config_cls().key_dump()
    assert METHODS["decpo"].config_cls(share_ref_logps=True).key_dump()["share_ref_logps"] is True


def test_the_memo_lock_is_exclusive_while_held(tmp_path):
    """Two workers reaching the same rows: the second waits for the first's rows instead of recomputing."""
    import fcntl

    memo = RefLogpsMemo(tmp_path, "m").scoped(max_length=8)
    lock = memo.path.with_suffix(".lock")
    with memo.locked(), open(lock, "w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_held_out_reference_logps_are_computed_once_per_results_folder(tiny_lm, tmp_path, monkeypatch):
    """The eval stages' reference (the base model's held-out pair log-probs) is read back by another pool —
    another worker or a resumed run — bit for bit, and recomputed only when its batching changes."""
    import bench.pool
    from bench.config import SuiteConfig
    from bench.core.preference import pair_logprobs

    model, tok = tiny_lm
    suite = SuiteConfig.model_validate(
        {"name": "x", "model": {"id": "embedded:m"}, "tasks": {"toxicity": {}}, "methods": {"base": {}}}
    )
    calls = []
    monkeypatch.setattr(bench.pool, "load_model", lambda spec, **kw: (model, tok))
    monkeypatch.setattr(bench.pool, "pair_logprobs", lambda *a, **kw: calls.append(kw) or pair_logprobs(*a, **kw))
    store = type("Store", (), {"out": tmp_path})()
    kw = dict(batch_size=2, use_chat_template=False)
    direct = pair_logprobs(model, tok, HELD_OUT, **kw)

    first = bench.pool.ModelPool(suite, store).reference_logps("data-a", 0, HELD_OUT, kw, version="2")
    again = bench.pool.ModelPool(suite, store).reference_logps("data-a", 0, HELD_OUT, kw, version="2")
    assert len(calls) == 1 and len(list((tmp_path / "memo" / "eval_ref_logps").glob("*.json"))) == 1
    for a, b, c in zip(first, again, direct):
        assert a.dtype == b.dtype == torch.float64 and torch.equal(a, c) and torch.equal(b, c)

    bench.pool.ModelPool(suite, store).reference_logps("data-a", 0, HELD_OUT, {**kw, "batch_size": 3}, version="2")
    assert len(calls) == 2  # other batching (other padding): another scope
    bench.pool.ModelPool(suite, store).reference_logps("data-a", 0, HELD_OUT, kw, version="3")
    assert len(calls) == 3  # a new eval stage version: computed again
    resampled = HELD_OUT[:-1] + [Pair(prompt=HELD_OUT[-1].prompt, chosen="no no", rejected="yes yes")]
    other = bench.pool.ModelPool(suite, store).reference_logps("data-a", 0, resampled, kw, version="2")
    assert len(calls) == 4  # the same data key with other pairs (rebuilt elsewhere): computed, never served
    assert torch.equal(other[0][-1], direct[1][-1]) and torch.equal(other[1][-1], direct[0][-1])
    bench.pool.ModelPool(suite, store).remember_reference(
        "data-b", 0, HELD_OUT, kw, direct, version="2"
    )  # the base model's eval
    served = bench.pool.ModelPool(suite, store).reference_logps("data-b", 0, HELD_OUT, kw, version="2")
    assert len(calls) == 4 and all(torch.equal(a, b) for a, b in zip(served, direct))
