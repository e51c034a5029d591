"""Method configs, and short real training runs of every method on the tiny Llama (TRL + PEFT)."""

import contextlib
import copy
import warnings

import pytest
import torch
from pydantic import ValidationError

from bench.align import fit_prompt, load_policy, lora_targets, make_trainer, save_policy, train_policy
from bench.lm import format_prompt
from bench.methods import METHODS, DecPOMethodConfig
from bench.sweep import sweep_decpo
from tasks._base import Pair, pair_logprobs, preference_metrics

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model is overhead-bound: one intra-op thread is ~2x faster on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TRAINED = sorted(set(METHODS) - {"base"})
# an easy preference: always "yes yes" over "no no"
TRAIN = [Pair(prompt=f"Question {i}: do you agree?", chosen="yes yes", rejected="no no") for i in range(16)]
HELD_OUT = [Pair(prompt=f"Held-out question {i}: agree?", chosen="yes yes", rejected="no no") for i in range(6)]
FAST = dict(max_steps=3, batch_size=4, eval_every=2, curve_pairs=2, curve_prompts=2, lr=5e-3)


def test_registry_names_every_method():
    assert set(METHODS) == {"base", "sft", "dpo", "decpo", "simpo", "l1"}
    for name in METHODS:
        assert METHODS[name]().model_dump() == METHODS[name].model_validate(METHODS[name]().model_dump()).model_dump()


@pytest.mark.parametrize("table,match", [
    ({"lambda": -1.0}, "greater than or equal to 0"),
    ({"lamda": 1e-3}, "Extra inputs are not permitted"),
    ({"layer": 1.5}, "fraction of depth"),
    ({"max_prompt_length": 256, "max_length": 256}, "max_prompt_length"),
    ({"lora_r": 0}, "greater than or equal to 1"),
])
def test_invalid_configs_raise(table, match):
    with pytest.raises(ValidationError, match=match):
        DecPOMethodConfig.model_validate(table)


def test_lambda_key_and_defaults():
    cfg = DecPOMethodConfig.model_validate({"lambda": 0.01, "layer": 15})
    assert cfg.lam == 0.01 and cfg.layer == 15 and cfg.normalize is True
    assert DecPOMethodConfig.model_validate({"layer": 0.5}).layer == 0.5
    d = METHODS["dpo"]()
    assert (d.beta, d.lora, d.lora_r, d.lora_alpha, d.lora_dropout) == (0.1, True, 8, 16, 0.05)
    assert (d.max_prompt_length, d.max_length) == (128, 256)
    with pytest.raises(ValidationError, match="frozen"):
        d.beta = 0.2


def test_fit_prompt_keeps_the_end_within_budget(tiny_lm):
    _, tok = tiny_lm
    long = " ".join(f"w{i}" for i in range(200)) + " the very end"
    text = fit_prompt(tok, long, 64)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 64
    assert "the very end<|im_end|>" in text and text.startswith("<|im_start|>system")
    assert fit_prompt(tok, "short", 64) == format_prompt(tok, "short")


def test_lora_targets_map_to_gpt2_names():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert lora_targets(gpt2, ("q_proj", "v_proj", "up_proj")) == ["c_attn", "c_fc"]
    with pytest.raises(ValueError, match="not a module"):
        lora_targets(gpt2, ("w_nonexistent",))


def test_wrong_config_type_and_base(tiny_lm, tmp_path):
    model, tok = tiny_lm
    with pytest.raises(TypeError, match="DecPOMethodConfig"):
        train_policy("decpo", METHODS["dpo"](), model, tok, TRAIN, HELD_OUT, tmp_path, 0)
    res = train_policy("base", METHODS["base"](), model, tok, TRAIN, HELD_OUT, tmp_path, 0, layer=0.5)
    assert res.policy is model and res.curves == [] and res.steps == 0 and res.layer == 1


def test_training_data_matches_the_scoring_prompt(tiny_lm, tmp_path):
    """Every trainer sees format_prompt's tokens (template applied once, no second BOS), then reply + EOS."""
    model, tok = tiny_lm
    prompt = tok(format_prompt(tok, TRAIN[0].prompt), add_special_tokens=False)["input_ids"]
    reply = tok("yes yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def first_row(method):
        return make_trainer(method, METHODS[method](**FAST), copy.deepcopy(model), tok, TRAIN[:2], tmp_path, 0
                            ).train_dataset[0]

    row = first_row("dpo")
    assert row["prompt_ids"] == prompt and row["chosen_ids"] == reply
    row = first_row("simpo")
    assert row["prompt_input_ids"] == prompt and row["chosen_input_ids"] == prompt + reply
    row = first_row("sft")
    assert row["input_ids"] == prompt + reply
    assert row["labels"] == [-100] * len(prompt) + reply  # loss on the reply only


@pytest.mark.parametrize("method", ["dpo", "decpo"])
def test_cpu_lm_head_scores_labelled_positions_only(tiny_lm, tmp_path, method, monkeypatch):
    """Under labelled_positions_only, TRL's chunked LM head sees the completion positions only, and the
    loss and LoRA gradients are those of TRL's every-position CPU path (same dropout draws)."""
    import trl.trainer.utils as trl_utils

    from bench.align import labelled_positions_only

    model, tok = tiny_lm
    trainer = make_trainer(method, METHODS[method](**FAST), copy.deepcopy(model), tok, TRAIN[:4], tmp_path, 0,
                           layer=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    seen: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: seen.append(hidden.shape[0]) or apply(hidden, *a))

    def loss_and_grads(compact: bool):
        trainer.model.zero_grad()
        torch.manual_seed(7)
        with labelled_positions_only() if compact else contextlib.nullcontext():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    full, compact = loss_and_grads(False), loss_and_grads(True)
    labelled = int(batch["completion_mask"][:, 1:].sum())     # next-token labels of the replies
    rows, width = batch["input_ids"].shape
    assert seen == [rows * (width - 1)] * 2 + [labelled] * 2   # policy + reference forward each time
    assert labelled < rows * (width - 1) / 2
    assert torch.allclose(compact[0], full[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(compact[1], full[1]))
    assert trl_utils._use_triton(torch.device("cpu")) is False, "the switch must be restored"


def _lora_state(policy):
    return {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}


def _initial_lora(model, cfg, seed=0):
    """The adapter TRL creates before step 0 (it seeds with args.seed right before get_peft_model)."""
    from peft import get_peft_model
    from transformers import set_seed

    from bench.align import _peft_config

    set_seed(seed)
    return _lora_state(get_peft_model(copy.deepcopy(model), _peft_config(cfg, model)))


def test_dpo_learns_the_easy_preference_and_is_deterministic(tiny_lm, tmp_path):
    model, tok = tiny_lm
    base = preference_metrics(model, tok, HELD_OUT, use_chat_template=False)
    assert base["pref_acc"] == 0.5 and base["reward_margin"] == 0.0
    cfg = METHODS["dpo"](**{**FAST, "max_steps": 4, "eval_every": 2})
    runs = [train_policy("dpo", cfg, model, tok, TRAIN, HELD_OUT, tmp_path / f"r{i}", seed=0,
                         use_chat_template=False, layer=1) for i in range(2)]
    after = preference_metrics(runs[0].policy, tok, HELD_OUT, use_chat_template=False)
    assert after["pref_acc"] > 0.5 and after["reward_margin"] > 0
    assert [r["step"] for r in runs[0].curves] == [0, 2, 4]
    assert runs[0].curves[0]["eval/pref_acc"] == 0.5 and runs[0].curves[-1]["eval/pref_acc"] > 0.5
    # the curve's held-out numbers are preference_metrics' numbers (reference log-probs cached at step 0)
    final = preference_metrics(runs[0].policy, tok, HELD_OUT[:cfg.curve_pairs], use_chat_template=False)
    assert runs[0].curves[-1]["eval/pref_acc"] == final["pref_acc"]
    assert runs[0].curves[-1]["eval/reward_margin"] == pytest.approx(final["reward_margin"], abs=1e-6)
    assert runs[0].curves[-1]["eval/logp_chosen"] == pytest.approx(final["logp_chosen"], abs=1e-6)
    s0, s1 = _lora_state(runs[0].policy), _lora_state(runs[1].policy)
    assert all(torch.equal(s0[n], s1[n]) for n in s0), "same seed must give the same adapter"
    assert runs[0].curves == runs[1].curves
    assert not hasattr(model, "peft_config"), "copy_model=True must leave the input model unwrapped"
    # what the runner evaluates: the adapter merged into the weights, against the base model's shared
    # log-probs, gives the adapter-disabled numbers up to float rounding
    merged = copy.deepcopy(runs[0].policy).merge_and_unload()
    ref = pair_logprobs(model, tok, HELD_OUT, use_chat_template=False)
    fast = preference_metrics(merged, tok, HELD_OUT, reference_logps=ref, use_chat_template=False)
    assert not hasattr(merged, "disable_adapter")
    assert fast == pytest.approx(after, abs=1e-5)
    with pytest.raises(ValueError, match="for 3 pairs"):
        preference_metrics(merged, tok, HELD_OUT[:3], reference_logps=ref, use_chat_template=False)


@pytest.mark.parametrize("method", [m for m in TRAINED if m != "dpo"])
def test_method_trains_every_lora_parameter(tiny_lm, tmp_path, method):
    model, tok = tiny_lm
    cfg = METHODS[method](**FAST)
    res = train_policy(method, cfg, model, tok, TRAIN, HELD_OUT, tmp_path, seed=0, use_chat_template=False, layer=1)
    init, now = _initial_lora(model, cfg), _lora_state(res.policy)
    assert init.keys() == now.keys() and len(now) == 2 * 3 * 2  # (A, B) × 3 targets × 2 layers
    unchanged = [n for n in now if torch.equal(init[n], now[n])]
    assert not unchanged, f"{method} left LoRA parameters unchanged: {unchanged}"
    assert [r["step"] for r in res.curves] == [0, 2, 3] and res.steps == 3
    assert all("eval/decpo_term" in r and "proxy/decorrelation" in r for r in res.curves)
    if method in ("decpo", "l1"):
        key = "trainer/reg/decor" if method == "decpo" else "trainer/reg/l1"
        assert res.curves[-1][key] > 0
    assert not res.policy.training
    assert not any("forward" in m.__dict__ for m in res.policy.modules()), "TRL's fused-head patch must be undone"


def test_full_finetuning_and_save_load_roundtrip(tiny_lm, tmp_path):
    model, tok = tiny_lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = METHODS["decpo"](**{**FAST, "max_steps": 2, "lora": False, "lr": 1e-3})
    res = train_policy("decpo", cfg, model, tok, TRAIN, HELD_OUT, tmp_path / "full", 0, use_chat_template=False,
                       layer=1)
    assert not hasattr(res.policy, "peft_config")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "the reference must stay frozen"
    assert all(p.requires_grad for p in model.parameters()) and "forward" not in model.__dict__
    changed = [n for n, p in res.policy.named_parameters() if not torch.equal(before[n], p)]
    assert changed and res.curves[-1]["eval/pref_acc"] > 0.5

    x = tok(["Held-out question 1: agree? yes"], return_tensors="pt")
    save_policy(res.policy, tmp_path / "full_policy")
    loaded = load_policy(copy.deepcopy(model), tmp_path / "full_policy")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, res.policy(**x).logits)

    lora = train_policy("dpo", METHODS["dpo"](**{**FAST, "max_steps": 1}), model, tok, TRAIN, HELD_OUT,
                        tmp_path / "lora", 0, use_chat_template=False, layer=1)
    save_policy(lora.policy, tmp_path / "lora_policy")
    files = {p.name for p in (tmp_path / "lora_policy").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_policy(copy.deepcopy(model), tmp_path / "lora_policy")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, lora.policy(**x).logits)


def test_sweep_decpo_reports_each_run(tiny_lm, tmp_path):
    model, tok = tiny_lm
    base = DecPOMethodConfig(**{**FAST, "max_steps": 1})
    rows = sweep_decpo(model, tok, TRAIN, HELD_OUT, tmp_path, lambdas=[0.0, 1.0], layers=[0], base_cfg=base,
                       use_chat_template=False)
    assert [(r["lambda"], r["layer"], r["step"]) for r in rows] == [(0.0, 0, 1), (1.0, 0, 1)]
    assert all(r["start/eval_decpo_term"] > 0 and "trainer/reg/decor" in r for r in rows)
