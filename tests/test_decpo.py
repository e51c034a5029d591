"""DecPO / L1 terms by hand, the last-token hook under both paddings, and DecPO(λ=0) ≡ DPO."""

import copy

import pytest
import torch

from bench.align import make_trainer
from bench.core.hooks import LastTokenCapture
from bench.core.lm import hook_module
from bench.core.task import Pair
from bench.decpo import decorrelation_penalty, l1_penalty
from bench.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decorrelation_penalty_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # Z Zᵀ − I = [[0,1,0],[1,1,2],[0,2,3]] → squares sum to 0+1+0 + 1+1+4 + 0+4+9 = 20
    assert decorrelation_penalty(z, normalize=False).item() == pytest.approx(20.0)
    # unit rows: cos(1,2) = cos(2,3) = 1/√2, cos(1,3) = 0 → 2·(½ + 0 + ½) = 2
    assert decorrelation_penalty(z, normalize=True).item() == pytest.approx(2.0, rel=1e-6)
    assert decorrelation_penalty(z).item() == pytest.approx(2.0, rel=1e-6)  # normalize is the default
    # orthonormal rows: no penalty either way
    assert decorrelation_penalty(torch.eye(3), normalize=False).item() == pytest.approx(0.0)


def test_l1_penalty_by_hand():
    assert l1_penalty(torch.tensor([[1.0, -2.0], [0.0, 3.0]])).item() == pytest.approx(3.0)
    assert l1_penalty(torch.zeros(4, 5)).item() == 0.0


def test_penalties_are_differentiable_and_finite_on_zero_rows():
    z = torch.zeros(3, 4, requires_grad=True)
    val = decorrelation_penalty(z, normalize=True)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(z.grad).all()
    assert val.item() == pytest.approx(3.0)  # diag of Ẑ Ẑᵀ is 0 for zero rows → (0 − 1)² per row


def _batch(tok, texts, side):
    old = tok.padding_side
    tok.padding_side = side
    try:
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = old


@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_picks_last_non_pad_token(tiny_lm, side):
    model, tok = tiny_lm
    texts = ["a short one", "a somewhat longer sentence than the first one", "mid length text here"]
    enc = _batch(tok, texts, side)
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    module = hook_module(model, 1)
    cap = LastTokenCapture(module)
    # explicit positions so left padding does not shift RoPE; the manual forward below is unpadded
    pos = (enc["attention_mask"].cumsum(1) - 1).clamp(min=0)
    cap.arm(enc["attention_mask"])
    model(**enc, position_ids=pos)
    z = cap.take()
    cap.remove()
    assert z is not None and z.shape == (3, module.out_features)

    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    try:
        for row, text in enumerate(texts):
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                model(**ids)
            torch.testing.assert_close(z[row].detach(), seen["out"][0, -1], rtol=1e-4, atol=1e-5)
    finally:
        handle.remove()


def test_capture_ignores_no_grad_passes(tiny_lm):
    model, tok = tiny_lm
    enc = _batch(tok, ["one two", "three"], "right")
    cap = LastTokenCapture(hook_module(model, 0))
    cap.arm(enc["attention_mask"])
    with torch.no_grad():  # e.g. TRL's reference pass
        model(**enc)
    assert cap.take() is None
    cap.remove()


PAIRS = [
    Pair(prompt=f"Question {i}: is it fine?", chosen="yes yes" + " indeed" * (i % 3), rejected="no no")
    for i in range(4)
]


def _loss_and_grads(method, model, tok, tmp_path, **over):
    cfg = METHODS[method].config_cls(max_steps=1, batch_size=4, lora_dropout=0.0, **over)
    trainer = make_trainer(method, cfg, model, tok, PAIRS, tmp_path / method, seed=0, use_chat_template=False, layer=1)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, batch, loss.detach(), grads


def _layer_one_output(trainer, batch):
    """The hooked module's output (layer 1) on ``batch``, every position, read by a plain forward."""
    seen = {}
    handle = hook_module(trainer.model, 1).register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    with torch.no_grad():
        trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    return seen["out"]


def test_decpo_with_zero_lambda_equals_dpo(tiny_lm, tmp_path):
    model, tok = tiny_lm
    _, _, loss_dpo, g_dpo = _loss_and_grads("dpo", copy.deepcopy(model), tok, tmp_path)
    trainer, _, loss_dec, g_dec = _loss_and_grads("decpo", copy.deepcopy(model), tok, tmp_path, lam=0.0)
    torch.testing.assert_close(loss_dec, loss_dpo)
    assert g_dpo.keys() == g_dec.keys() and any(g.abs().sum() > 0 for g in g_dpo.values())
    for name in g_dpo:
        torch.testing.assert_close(g_dec[name], g_dpo[name], msg=name)
    assert len(trainer._metrics["train"]["reg/decor"]) == 1  # the term is still measured and logged


@pytest.mark.parametrize("method,normalize", [("decpo", True), ("decpo", False), ("l1", None)])
def test_regulariser_adds_lambda_times_term(tiny_lm, tmp_path, method, normalize):
    model, tok = tiny_lm
    lam = 0.5
    _, _, loss_dpo, _ = _loss_and_grads("dpo", copy.deepcopy(model), tok, tmp_path)
    extra = {} if normalize is None else {"normalize": normalize}
    trainer, batch, loss_reg, _ = _loss_and_grads(method, copy.deepcopy(model), tok, tmp_path, lam=lam, **extra)
    # Z by hand: the hooked module's output at each row's last attended position (right padding)
    out = _layer_one_output(trainer, batch)
    last = batch["attention_mask"].sum(1) - 1
    z = out[torch.arange(len(last)), last]
    assert z.shape[0] == 8  # 4 chosen + 4 rejected rows
    term = decorrelation_penalty(z, normalize=normalize) if method == "decpo" else l1_penalty(z)
    torch.testing.assert_close(loss_reg - loss_dpo, lam * term, rtol=1e-4, atol=1e-5)
    logged = trainer._metrics["train"][f"reg/{'decor' if method == 'decpo' else 'l1'}"]
    assert logged == [pytest.approx(term.item(), rel=1e-4)]


def test_regulariser_share_is_lambda_times_term_over_the_logged_loss():
    """``train_reg_share`` = mean over logged windows of λ·reg/loss (windows without a loss are left out)."""
    from bench.stages.train import regulariser_share

    curves = [
        {"trainer/loss": 1.0, "trainer/reg/decor": 0.5},
        {"trainer/loss": 2.0, "trainer/reg/decor": 0.5},
        {"eval/loss": 3.0},
    ]
    assert regulariser_share(curves, 0.8) == pytest.approx(0.8 * (0.5 / 1.0 + 0.5 / 2.0) / 2)
    assert regulariser_share(curves, 0.0) == 0.0
    assert regulariser_share(curves, None) is None  # DPO: no penalty
    assert regulariser_share([{"trainer/loss": 1.0}], 0.8) is None  # nothing logged under trainer/reg/


@pytest.mark.parametrize("position", ["last_real", "batch_last"])
def test_paper_regulariser_adds_lambda_times_term_at_its_position(tiny_lm, tmp_path, position):
    """``decpo_paper`` adds λ · (|Z'||Z'|ᵀ − I).mean() to the DPO loss, with Z read by hand at each row's last
    attended token (``last_real``) or at the padded batch's last column (``batch_last``, a pad token for the
    shorter rows); the two positions give different terms on this batch of unequal lengths."""
    from bench.methods.decpo_paper import paper_decorrelation_term

    model, tok = tiny_lm
    lam = 0.5
    _, _, loss_dpo, _ = _loss_and_grads("dpo", copy.deepcopy(model), tok, tmp_path)
    trainer, batch, loss_reg, _ = _loss_and_grads(
        "decpo_paper", copy.deepcopy(model), tok, tmp_path, lam=lam, position=position
    )
    out = _layer_one_output(trainer, batch)
    last_real = batch["attention_mask"].sum(1) - 1
    assert len(set(last_real.tolist())) > 1  # rows of unequal length: the positions differ
    at = {"last_real": last_real, "batch_last": torch.full_like(last_real, batch["input_ids"].shape[1] - 1)}
    terms = {k: paper_decorrelation_term(out[torch.arange(len(i)), i]) for k, i in at.items()}
    added = (loss_reg - loss_dpo) / lam
    other = "batch_last" if position == "last_real" else "last_real"
    torch.testing.assert_close(added, terms[position], rtol=0, atol=1e-5)
    assert abs(float(added - terms[other])) > 2e-4  # not the other position's term (they differ by ~1e-3 here)
    assert trainer._metrics["train"]["reg/decor_paper"] == [pytest.approx(terms[position].item(), rel=1e-4)]


def test_paper_term_is_the_size_of_the_mean_absolute_activation():
    """(|Z'||Z'|ᵀ − I).mean() = ‖mean|z'|‖² − 1/N on rows [0::2]; by hand: Z' = [[1, 0], [0, −2]] →
    |Z'||Z'|ᵀ − I = [[0, 0], [0, 3]], mean 0.75 = ‖(0.5, 1)‖² − 1/2."""
    from bench.methods.decpo_paper import paper_decorrelation_term

    z = torch.tensor([[1.0, 0.0], [9.0, 9.0], [0.0, -2.0], [7.0, 7.0]])  # rows 1 and 3 are not read
    assert float(paper_decorrelation_term(z)) == pytest.approx(0.75)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    a = z[0::2].abs()
    assert float(paper_decorrelation_term(z)) == pytest.approx(float(a.mean(0).pow(2).sum() - 1 / 8), rel=1e-5)


def test_paper_position_batch_last_reads_index_minus_one(tiny_lm, tmp_path):
    """position = "batch_last" reads the padded batch's last column (a pad token for shorter rows, as the
    paper's code did under right padding); the default reads each row's last real token."""
    import copy

    from bench.align import make_trainer
    from bench.core.task import Pair
    from bench.methods import METHODS

    model, tok = tiny_lm
    pairs = [Pair(prompt=f"Q{i} {'long ' * i}?", chosen="yes" * (1 + i % 2), rejected="no") for i in range(4)]
    fast = dict(max_steps=1, batch_size=4, eval_every=1, curve_pairs=2, curve_prompts=2, max_length=64,
                max_prompt_length=48)  # fmt: skip
    for position, batch_last in (("last_real", False), ("batch_last", True)):
        cfg = METHODS["decpo_paper"].config_cls(**fast, position=position)
        trainer = make_trainer("decpo_paper", cfg, copy.deepcopy(model), tok, pairs, tmp_path, 0, layer=1)
        assert trainer.read_batch_last is batch_last and trainer.reg_coef == 1e-3
