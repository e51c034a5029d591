"""Neuron proxies (SPEC §4) against hand-computed values, and the one-pass collector."""

import math

import pytest
import torch

from bench import proxies as P


def test_identical_rows_have_zero_decorrelation():
    z = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    assert P.decorrelation(z) == pytest.approx(0.0, abs=1e-12)
    # Ẑ Ẑᵀ is all ones: (N² − N) off-diagonal ones squared / N² = (16 − 4) / 16
    assert P.decor_loss(z) == pytest.approx(12 / 16)


def test_orthogonal_rows_are_fully_decorrelated():
    z = torch.eye(3) * torch.tensor([[2.0], [5.0], [0.5]])
    assert P.decorrelation(z) == pytest.approx(1.0)
    assert P.decor_loss(z) == pytest.approx(0.0, abs=1e-12)


def test_opposite_rows():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert P.decorrelation(z) == pytest.approx(2.0)  # 1 − cos = 1 − (−1)


def test_act_variance_hand_computed():
    z = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    # row variances (population): 1, 0, 0 → mean 1/3
    assert P.act_variance(z) == pytest.approx(1 / 3)


def test_mono_scale_hand_computed():
    z = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    # neuron 0: var 1, E[z²] 5; neuron 1: var 0, E[z²] 4 → mean var 0.5 / mean E 4.5
    assert P.mono_scale(z) == pytest.approx(0.5 / 4.5)
    assert P.mono_scale(torch.ones(3, 4)) == pytest.approx(0.0)


def test_weight_proxy_hand_computed():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # row norms 5, 1, 2
    b = torch.tensor([1.0, -1.0, 0.5])  # products 5, −1, 1 → median 1
    assert P.weight_proxy(w, b) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations_are_an_error(bad):
    z = torch.ones(3, 2)
    z[1, 1] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        P.decorrelation(z)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        P.act_variance(torch.ones(3))
    with pytest.raises(ValueError, match="at least 2"):
        P.decorrelation(torch.ones(1, 3))


def test_one_pass_collection_matches_per_layer_forward(tiny_lm):
    model, tok = tiny_lm
    texts = ["hello there", "a much longer sentence about cats and dogs", "x"]
    zs = P.collect_last_token(model, tok, texts, [0, 1], batch_size=2)
    assert set(zs) == {0, 1} and zs[0].shape == (3, model.config.intermediate_size)
    # reference: each text alone (no padding at all)
    for i, t in enumerate(texts):
        one = P.collect_last_token(model, tok, [t], [1], batch_size=1)[1]
        torch.testing.assert_close(zs[1][i], one[0], rtol=1e-4, atol=1e-5)
    rows = P.model_proxies(model, tok, texts)
    assert [r["layer"] for r in rows] == [0, 1] and rows[-1]["rel_depth"] == 1.0
    assert all(0 <= r["mono_scale"] <= 1 and math.isfinite(r["decorrelation"]) for r in rows)
    assert "weight_proxy" not in rows[0]  # Llama's up_proj has no bias


def test_replies_are_read_at_the_eos_after_the_reply(tiny_lm):
    """With replies, z_i is the activation at the EOS that ends format_prompt(prompt_i) + reply_i + EOS (the
    training sequence, read where DecPO reads it); a sequence longer than max_length is an error, not a cut;
    without replies a row is the formatted prompt alone, read at its last token (the paper's read-out)."""
    from bench.core.lm import format_prompt

    model, tok = tiny_lm
    prompts, replies = ["Say something kind.", "Rewrite: it rained"], [" You did well today.", " The garden drank"]
    zs = P.collect_last_token(model, tok, prompts, [1], replies=replies, batch_size=2)[1]
    assert tok.chat_template
    for i, (p, r) in enumerate(zip(prompts, replies)):
        full = format_prompt(tok, p) + r + tok.eos_token
        ref = P.collect_last_token(model, tok, [full], [1], use_chat_template=False)[1][0]
        torch.testing.assert_close(zs[i], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"2 proxy input\(s\) exceed max_length = 4 tokens"):
        P.collect_last_token(model, tok, prompts, [1], replies=replies, max_length=4)
    bare = P.collect_last_token(model, tok, prompts, [1], batch_size=2)[1]
    ref = P.collect_last_token(model, tok, [format_prompt(tok, prompts[0])], [1], use_chat_template=False)[1][0]
    torch.testing.assert_close(bare[0], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="2 texts but 1 replies"):
        P.collect_last_token(model, tok, prompts, [1], replies=replies[:1])


def test_most_changed_neurons_finds_the_edited_rows(tiny_lm):
    import copy

    model, tok = tiny_lm
    edited = copy.deepcopy(model)
    up = edited.model.layers[1].mlp.up_proj
    up.weight.data[7] += 1.0  # neuron 7 changes most
    up.weight.data[3] += 0.5  # then neuron 3
    rows = P.most_changed_neurons(model, edited, tok, 1, top=2, n_tokens=4)
    assert [r["neuron"] for r in rows] == [7, 3]
    assert rows[0]["change"] == pytest.approx(model.config.hidden_size**0.5, rel=1e-5)  # ‖1·ones(d)‖
    assert all(len(r["tokens"]) == 4 for r in rows)
    # the top tokens are the argmax of W_U · W_down[:, k]
    w = model.lm_head.weight @ model.model.layers[1].mlp.down_proj.weight[:, 7]
    assert rows[0]["tokens"][0] == tok.decode([int(w.argmax())])


def test_effective_weight_includes_lora(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_lm
    base_w = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj"], init_lora_weights=False))
    peft.eval()
    layer = peft.base_model.model.model.layers[0].mlp.up_proj
    expected = base_w + layer.get_delta_weight("default")
    torch.testing.assert_close(P.effective_weight(layer), expected, rtol=1e-4, atol=1e-5)


def test_collection_stops_before_the_lm_head(tiny_lm):
    """Only hooked layers are read, so the forward stops after the last one: the LM head never runs."""
    model, tok = tiny_lm
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        zs = P.collect_last_token(model, tok, ["hello there", "x"], [0, 1], batch_size=2)
    finally:
        handle.remove()
    assert calls == [] and zs[1].shape == (2, model.config.intermediate_size)
