"""Method configs, and short real training runs of every method on the tiny Llama (TRL + PEFT)."""

import contextlib
import copy
import warnings

import pytest
import torch
from pydantic import ValidationError

from bench.align import (
    check_lengths,
    load_policy,
    lora_targets,
    make_trainer,
    save_policy,
    train_policy,
    training_order,
)
from bench.core.lm import format_prompt
from bench.core.preference import pair_logprobs, preference_metrics
from bench.core.task import Pair
from bench.methods import METHODS, DecPOMethodConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TRAINED = sorted(m for m in METHODS if METHODS[m].trains)
# an easy preference: always "yes yes" over "no no"
TRAIN = [Pair(prompt=f"Question {i}: do you agree?", chosen="yes yes", rejected="no no") for i in range(16)]
HELD_OUT = [Pair(prompt=f"Held-out question {i}: agree?", chosen="yes yes", rejected="no no") for i in range(6)]
FAST = dict(max_steps=3, batch_size=4, eval_every=2, curve_pairs=2, curve_prompts=2, lr=5e-3)


def test_registry_names_every_method():
    assert set(METHODS) == {
        "base",
        "random_init",
        "sft",
        "dpo",
        "dpo_aa",
        "ipo",
        "kto",
        "decpo",
        "decpo_paper",
        "simpo",
        "l1",
    }
    for name, m in METHODS.items():
        assert m.config_cls().model_dump() == m.config_cls.model_validate(m.config_cls().model_dump()).model_dump()
        assert (m.build is not None) == m.trains and m.name == name
    assert METHODS["dpo_aa"].config_cls().noise_seed == 1 and METHODS["dpo"].config_cls().noise_seed == 0


@pytest.mark.parametrize(
    "table,match",
    [
        ({"lambda": -1.0}, "greater than or equal to 0"),
        ({"lamda": 1e-3}, "Extra inputs are not permitted"),
        ({"layer": 1.5}, "fraction of depth"),
        ({"max_prompt_length": 256, "max_length": 256}, "max_prompt_length"),
        ({"lora_r": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_configs_raise(table, match):
    with pytest.raises(ValidationError, match=match):
        DecPOMethodConfig.model_validate(table)


def test_lambda_key_and_defaults():
    cfg = DecPOMethodConfig.model_validate({"lambda": 0.01, "layer": 15})
    assert cfg.lam == 0.01 and cfg.layer == 15 and cfg.normalize is True
    assert DecPOMethodConfig.model_validate({"layer": 0.5}).layer == 0.5
    d = METHODS["dpo"].config_cls()
    assert (d.beta, d.lora, d.lora_r, d.lora_alpha, d.lora_dropout) == (0.1, True, 8, 16, 0.05)
    assert (d.max_prompt_length, d.max_length) == (128, 256)
    with pytest.raises(ValidationError, match="frozen"):
        d.beta = 0.2


def test_sequences_that_do_not_fit_are_errors_not_cuts(tiny_lm):
    _, tok = tiny_lm
    long = Pair(prompt=" ".join(f"w{i}" for i in range(200)), chosen="yes", rejected="no", item="it7")
    cfg = METHODS["dpo"].config_cls(max_length=256, max_prompt_length=64)
    with pytest.raises(ValueError, match=r"training pair 1 \(item it7\).*> max_prompt_length = 64"):
        check_lengths(cfg, tok, [TRAIN[0], long], True)
    reply = Pair(prompt="short", chosen=" ".join(["yes"] * 300), rejected="no")
    with pytest.raises(ValueError, match="> max_length = 256"):
        check_lengths(cfg, tok, [reply], True)
    check_lengths(cfg, tok, TRAIN, True)


def test_training_order_interleaves_strata_and_repeats_epochs():
    strata = ["a:x"] * 8 + ["a:y"] * 8 + ["b:x"] * 8 + ["b:y"] * 8
    order = training_order(strata, 80, seed=0)
    assert len(order) == 80 and sorted(order[:32]) == list(range(32)) and sorted(order[32:64]) == list(range(32))
    for start in range(0, 32, 4):  # every batch of 4 holds one row per stratum
        assert sorted(strata[i] for i in order[start : start + 4]) == sorted(set(strata))
    assert order == training_order(strata, 80, seed=0) and order != training_order(strata, 80, seed=1)
    assert sorted(training_order([""] * 10, 10, seed=3)) == list(range(10))


def test_ipo_loss_at_the_reference_is_one_over_four_tau_squared(tiny_lm, tmp_path):
    """IPO (one file, bench/methods/ipo.py): before any step policy = reference, so h = 0 and the loss is
    (0 − 1/(2τ))² = 1/(4τ²): 25 at τ = 0.1, 100 at τ = 0.05."""
    model, tok = tiny_lm
    for tau, want in ((0.1, 25.0), (0.05, 100.0)):
        cfg = METHODS["ipo"].config_cls(**{**FAST, "beta": tau})
        trainer = make_trainer("ipo", cfg, copy.deepcopy(model), tok, TRAIN[:4], tmp_path, 0)
        assert trainer.args.loss_type == ["ipo"]
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
        assert float(loss) == pytest.approx(want, rel=1e-4)


def test_lora_targets_map_to_gpt2_names():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert lora_targets(gpt2, ("q_proj", "v_proj", "up_proj")) == ["c_attn", "c_fc"]
    with pytest.raises(ValueError, match="not a module"):
        lora_targets(gpt2, ("w_nonexistent",))


def test_wrong_config_type_and_base(tiny_lm, tmp_path):
    model, tok = tiny_lm
    with pytest.raises(TypeError, match="DecPOMethodConfig"):
        train_policy("decpo", METHODS["dpo"].config_cls(), model, tok, TRAIN, HELD_OUT, tmp_path, 0)
    res = train_policy("base", METHODS["base"].config_cls(), model, tok, TRAIN, HELD_OUT, tmp_path, 0, layer=0.5)
    assert res.policy is model and res.curves == [] and res.steps == 0 and res.layer == 1


def test_training_data_matches_the_scoring_prompt(tiny_lm, tmp_path):
    """Every trainer sees format_prompt's tokens (template applied once, no second BOS), then reply + EOS."""
    model, tok = tiny_lm
    prompt = tok(format_prompt(tok, TRAIN[0].prompt), add_special_tokens=False)["input_ids"]
    reply = tok("yes yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def first_row(method):
        same = [TRAIN[0]] * 2  # every row is TRAIN[0] whatever the order
        return make_trainer(
            method, METHODS[method].config_cls(**FAST), copy.deepcopy(model), tok, same, tmp_path, 0
        ).train_dataset[0]

    row = first_row("dpo")
    assert row["prompt_ids"] == prompt and row["chosen_ids"] == reply
    row = first_row("simpo")
    assert row["prompt_input_ids"] == prompt and row["chosen_input_ids"] == prompt + reply
    row = first_row("sft")
    assert row["input_ids"] == prompt + reply
    assert row["labels"] == [-100] * len(prompt) + reply  # loss on the reply only


def test_penalty_and_proxies_read_the_same_token_ids(tiny_lm, tmp_path):
    """The DecPO penalty reads TRL's collated batch at its last non-padding token; the proxies build each
    (prompt, reply) sequence with bench.lm.training_ids and read its last token. Both see the same ids,
    and the token read is the EOS that TRL appends."""
    from bench.core.lm import training_ids
    from bench.proxies import collect_last_token

    model, tok = tiny_lm
    pairs = [
        Pair(prompt=f"Question {i}: {'really ' * i}agree?", chosen="yes" * (i % 3 + 1), rejected="no") for i in range(6)
    ]
    trainer = make_trainer(
        "decpo",
        METHODS["decpo"].config_cls(**{**FAST, "batch_size": 6}),
        copy.deepcopy(model),
        tok,
        pairs,
        tmp_path,
        0,
        layer=1,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    last = batch["attention_mask"].sum(1) - 1  # right padding: last real position
    collated = {tuple(row[: i + 1].tolist()) for row, i in zip(batch["input_ids"], last)}
    assert all(row[i] == tok.eos_token_id for row, i in zip(batch["input_ids"], last))
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["input_ids"], kw["attention_mask"])), with_kwargs=True
    )
    try:
        collect_last_token(
            model,
            tok,
            [p.prompt for p in pairs] * 2,
            [1],
            batch_size=12,
            replies=[p.chosen for p in pairs] + [p.rejected for p in pairs],
        )
    finally:
        handle.remove()
    ids, mask = seen[0]
    proxies = {tuple(row[: i + 1].tolist()) for row, i in zip(ids, mask.sum(1) - 1)}
    built = {tuple(training_ids(tok, p.prompt, r)) for p in pairs for r in (p.chosen, p.rejected)}
    assert collated == built == proxies


@pytest.mark.parametrize("method", ["dpo", "decpo"])
def test_cpu_lm_head_scores_labelled_positions_only(tiny_lm, tmp_path, method, monkeypatch):
    """Under labelled_positions_only, TRL's chunked LM head sees the completion positions only, and the
    loss and LoRA gradients are those of TRL's every-position CPU path (same dropout draws)."""
    import trl.trainer.utils as trl_utils

    from bench.core.compat import labelled_positions_only

    model, tok = tiny_lm
    trainer = make_trainer(
        method, METHODS[method].config_cls(**FAST), copy.deepcopy(model), tok, TRAIN[:4], tmp_path, 0, layer=1
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    seen: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda hidden, *a: seen.append(hidden.shape[0]) or apply(hidden, *a)
    )

    def loss_and_grads(compact: bool):
        trainer.model.zero_grad()
        torch.manual_seed(7)
        with labelled_positions_only() if compact else contextlib.nullcontext():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    full, compact = loss_and_grads(False), loss_and_grads(True)
    labelled = int(batch["completion_mask"][:, 1:].sum())  # next-token labels of the replies
    rows, width = batch["input_ids"].shape
    assert seen == [rows * (width - 1)] * 2 + [labelled] * 2  # policy + reference forward each time
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
    cfg = METHODS["dpo"].config_cls(**{**FAST, "max_steps": 4, "eval_every": 2})
    runs = [
        train_policy(
            "dpo", cfg, model, tok, TRAIN, HELD_OUT, tmp_path / f"r{i}", seed=0, use_chat_template=False, layer=1
        )
        for i in range(2)
    ]
    after = preference_metrics(runs[0].policy, tok, HELD_OUT, use_chat_template=False)
    assert after["pref_acc"] > 0.5 and after["reward_margin"] > 0
    assert [r["step"] for r in runs[0].curves] == [0, 2, 4]
    assert runs[0].curves[0]["eval/pref_acc"] == 0.5 and runs[0].curves[-1]["eval/pref_acc"] > 0.5
    # the curve's held-out numbers are preference_metrics' numbers (reference log-probs cached at step 0)
    final = preference_metrics(runs[0].policy, tok, HELD_OUT[: cfg.curve_pairs], use_chat_template=False)
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
    cfg = METHODS[method].config_cls(**FAST)
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
    cfg = METHODS["decpo"].config_cls(**{**FAST, "max_steps": 2, "lora": False, "lr": 1e-3})
    res = train_policy(
        "decpo", cfg, model, tok, TRAIN, HELD_OUT, tmp_path / "full", 0, use_chat_template=False, layer=1
    )
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

    lora = train_policy(
        "dpo",
        METHODS["dpo"].config_cls(**{**FAST, "max_steps": 1}),
        model,
        tok,
        TRAIN,
        HELD_OUT,
        tmp_path / "lora",
        0,
        use_chat_template=False,
        layer=1,
    )
    save_policy(lora.policy, tmp_path / "lora_policy")
    files = {p.name for p in (tmp_path / "lora_policy").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_policy(copy.deepcopy(model), tmp_path / "lora_policy")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, lora.policy(**x).logits)


def test_kto_sees_each_pair_as_two_labelled_rows_in_one_batch(tiny_lm, tmp_path):
    """KTO (one file, bench/methods/kto.py, data = "unpaired"): chosen → label True, rejected → False, adjacent,
    and one optimiser step sees both rows of batch_size pairs."""
    model, tok = tiny_lm
    cfg = METHODS["kto"].config_cls(**FAST)
    trainer = make_trainer("kto", cfg, copy.deepcopy(model), tok, TRAIN, tmp_path, 0)
    ds = trainer.train_dataset
    assert len(ds) == 2 * FAST["max_steps"] * FAST["batch_size"]
    assert ds["label"][:4] == [True, False, True, False]
    assert trainer.args.per_device_train_batch_size == 2 * FAST["batch_size"]


def test_length_average_is_trls_sigmoid_norm_and_leaves_keys_unchanged(tmp_path):
    """The paper's length-averaged DPO: TRL ``sigmoid_norm``; off, it is absent from the stage key's config."""
    from bench.methods.dpo import dpo_args

    on, off = METHODS["decpo_paper"].config_cls(length_average=True), METHODS["decpo_paper"].config_cls()
    assert dpo_args(on, {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False}).loss_type == ["sigmoid_norm"]
    assert dpo_args(off, {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False}).loss_type == ["sigmoid"]
    assert "length_average" not in off.key_dump() and on.key_dump()["length_average"] is True
    for name in ("ipo", "kto"):
        with pytest.raises(ValueError, match="length_average is a DPO-loss option"):
            METHODS[name].config_cls(length_average=True)
