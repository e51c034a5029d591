"""Neuron-level monosemanticity proxies (SPEC.md §4), per layer.

z_i ∈ R^d is the hooked module's output (default ``mlp.up_proj``) of input i at the token DecPO reads
(``bench.lm.READOUT``: the EOS after the reply of a held-out prompt + chosen reply, built exactly as a
training sequence), or — for ``*_prompt`` — at the last token of the prompt alone (the paper's read-out);
Z = [z_1 … z_N] ∈ R^{N×d}. All proxies are pure functions of Z (float64 inside):

- ``decorrelation``  = 1 − mean_{i≠j} cos(z_i, z_j)                       (Yan et al. 2024, Figs. 3–4)
- ``act_variance``   = mean_i Var_k(z_ik), population variance over the d hidden dims (Fig. 5)
- ``mono_scale``     = mean_k Var_i(z_ik) / mean_k E_i[z_ik²]; scale-free, in [0, 1]
- ``decor_loss``     = ‖Ẑ Ẑᵀ − I‖²_F / N², Ẑ = row-normalised Z (the DecPO term, evaluated)
- ``weight_proxy``   = median_k ‖W_in,k‖₂ · b_in,k, only for MLPs whose input projection has a bias

``collect_last_token`` gets Z for every requested layer from ONE forward pass with hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from bench.core.controls import control
from bench.core.errors import ConfigError, NumericalError
from bench.core.hooks import read_last_tokens
from bench.core.lm import _unwrap, decoder_layers, hook_module, n_layers, training_ids, training_prompt

PROXY_NAMES = ("decorrelation", "act_variance", "mono_scale", "decor_loss")


def _check(z: Tensor) -> Tensor:
    if z.ndim != 2:
        raise ValueError(f"proxies take an (N, d) matrix, got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"proxies need at least 2 rows, got {z.shape[0]}")
    if not torch.isfinite(z).all():
        raise NumericalError(f"activations contain {int((~torch.isfinite(z)).sum())} NaN/inf values")
    return z.double()


def _unit_rows(z: Tensor) -> Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def decorrelation(z: Tensor) -> float:
    """1 − mean over ordered pairs i≠j of cos(z_i, z_j). Identical rows → 0; orthogonal rows → 1."""
    z = _check(z)
    c = _unit_rows(z) @ _unit_rows(z).T
    n = z.shape[0]
    return float(1.0 - (c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def act_variance(z: Tensor) -> float:
    """mean_i Var_k(z_ik): variance of each row across its d hidden units (population, /d), averaged."""
    return float(_check(z).var(dim=1, unbiased=False).mean())


def mono_scale(z: Tensor) -> float:
    """mean_k Var_i(z_ik) / mean_k E_i[z_ik²]: share of each neuron's energy that varies across inputs."""
    z = _check(z)
    denom = (z**2).mean(0).mean()
    if denom == 0:
        return 0.0
    return float(z.var(dim=0, unbiased=False).mean() / denom)


def decor_loss(z: Tensor) -> float:
    """‖Ẑ Ẑᵀ − I‖²_F / N² with Ẑ the row-normalised Z (mean squared off-diagonal cosine, × (N−1)/N)."""
    z = _check(z)
    u = _unit_rows(z)
    g = u @ u.T - torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    return float((g**2).sum() / z.shape[0] ** 2)


def weight_proxy(weight: Tensor, bias: Tensor) -> float:
    """median_k ‖W_in,k‖₂ · b_in,k for an input projection with weight (d_mlp, d_model), bias (d_mlp,).

    GPT-2's Conv1D stores the transpose (d_model, d_mlp); pass ``weight.T`` for it.
    """
    if weight.shape[0] != bias.shape[0]:
        raise ValueError(f"weight rows {weight.shape[0]} != bias size {bias.shape[0]}")
    return float((weight.double().norm(dim=1) * bias.double()).median())


def layer_proxies(z: Tensor) -> dict[str, float]:
    """All Z-based proxies of one layer."""
    return {
        "decorrelation": decorrelation(z),
        "act_variance": act_variance(z),
        "mono_scale": mono_scale(z),
        "decor_loss": decor_loss(z),
    }


def input_weight_proxy(model, layer: int, hook: str = "mlp.up_proj") -> float | None:
    """``weight_proxy`` of the hooked projection, or None when it has no bias (e.g. Llama)."""
    mod = hook_module(model, layer, hook)
    if getattr(mod, "bias", None) is None:
        return None
    w = cast(Tensor, mod.weight)
    if type(mod).__name__ == "Conv1D":  # transformers' GPT-2 Conv1D: weight is (d_in, d_out)
        w = w.T
    return weight_proxy(w.detach(), cast(Tensor, mod.bias).detach())


@torch.no_grad()
def collect_last_token(
    model,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    hook: str = "mlp.up_proj",
    batch_size: int = 16,
    max_length: int = 256,
    use_chat_template: bool = True,
    replies: Sequence[str] | None = None,
) -> dict[int, Tensor]:
    """Z per layer from one forward pass per batch: {layer: (N, d) float32 CPU tensor}.

    With ``replies``, row i is the training sequence of (text i, reply i) exactly as the trainers build
    it (``bench.lm.training_ids``: prompt + reply + EOS) and z_i is read at its EOS — the token the
    DecPO/L1 penalty reads in training. Without replies, row i is the formatted prompt alone
    (``bench.lm.training_prompt``) read at its last token: the paper's figure read-out (``decorrelation_prompt``;
    a chat prompt ends in the template's fixed assistant header). A row longer than ``max_length`` is
    an error (cutting it would change the prefix the read token sees); raise ``max_length``.
    """
    if replies is not None and len(replies) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(replies)} replies")
    rows = [
        training_ids(tokenizer, t, replies[i], use_chat_template)
        if replies is not None
        else tokenizer(text=training_prompt(tokenizer, t, use_chat_template))["input_ids"]
        for i, t in enumerate(texts)
    ]
    if too_long := [i for i, r in enumerate(rows) if len(r) > max_length]:
        raise ConfigError(
            f"{len(too_long)} proxy input(s) exceed max_length = {max_length} tokens (the longest has "
            f"{max(len(rows[i]) for i in too_long)}, e.g. text {too_long[0]}: {texts[too_long[0]][:40]!r}); "
            "raise [proxies] max_length"
        )
    return read_last_tokens(model, rows, layers, hook=hook, pad_id=tokenizer.pad_token_id, batch_size=batch_size)


def model_proxies(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    hook: str = "mlp.up_proj",
    batch_size: int = 16,
    max_length: int = 256,
    use_chat_template: bool = True,
    layers: Sequence[int] | None = None,
    replies: Sequence[str] | None = None,
) -> list[dict[str, float]]:
    """Proxies for every layer (or ``layers``): one row per layer with ``layer`` and ``rel_depth``."""

    total = n_layers(model)
    layers = list(range(total)) if layers is None else list(layers)
    zs = collect_last_token(
        model,
        tokenizer,
        texts,
        layers,
        hook=hook,
        batch_size=batch_size,
        max_length=max_length,
        use_chat_template=use_chat_template,
        replies=replies,
    )
    rows = []
    for l in layers:
        row = {"layer": l, "rel_depth": l / max(1, total - 1), **layer_proxies(zs[l])}
        wp = input_weight_proxy(model, l, hook)
        if wp is not None:
            row["weight_proxy"] = wp
        rows.append(row)
    return rows


@torch.no_grad()
def effective_weight(module) -> Tensor:
    """(d_out, d_in) weight a linear map applies, LoRA adapters included: W_eff = f(I)ᵀ − bias.

    Reads the map off its outputs on the identity, so a PEFT LoRA layer gives W + (α/r)·B·A without
    knowing PEFT's internals. The module must be in eval mode (no dropout).
    """
    d_in = module.in_features if hasattr(module, "in_features") else module.weight.shape[0]
    p = next(module.parameters())
    out = module(torch.eye(d_in, dtype=p.dtype, device=p.device)).float()
    bias = getattr(module, "bias", None)
    if bias is not None:
        out = out - bias.float()
    return out.T.cpu()


@torch.no_grad()
def most_changed_neurons(
    base, policy, tokenizer, layer: int, *, hook: str = "mlp.up_proj", top: int = 10, n_tokens: int = 8
) -> list[dict]:
    """The paper's Table 1: neurons of ``layer`` whose input weights changed most, with their top tokens.

    change_k = ‖W_in,k(policy) − W_in,k(base)‖₂ (row k of the hooked projection, LoRA merged);
    a neuron's tokens are the top-``n_tokens`` entries of W_U · W_down[:, k] (its output direction
    read through the unembedding). Llama-style MLPs only (needs ``mlp.down_proj`` and an lm_head).
    """

    delta = effective_weight(hook_module(policy, layer, hook)) - effective_weight(hook_module(base, layer, hook))
    change = delta.norm(dim=1)
    idx = change.argsort(descending=True)[:top]
    eye = torch.eye(change.numel(), device=change.device)[:, idx]
    tokens = mlp_output_tokens(base, tokenizer, layer, eye, n_tokens=n_tokens)
    return [
        {"layer": layer, "neuron": k, "change": float(change[k]), "tokens": toks}
        for k, toks in zip(idx.tolist(), tokens)
    ]


@torch.no_grad()
def mlp_output_tokens(model, tokenizer, layer: int, dirs: Tensor, *, n_tokens: int = 8) -> list[list[str]]:
    """Top-``n_tokens`` of W_U · W_down · d for each column d of ``dirs`` (d_mlp × n): a direction in the MLP's
    hidden space read through the down projection and the unembedding (the gate, the final norm and every
    later layer are left out: a direct-path reading, as in the paper's Table 1). Llama-style MLPs only."""
    block = decoder_layers(model)[layer]
    if not hasattr(block.mlp, "down_proj"):
        raise ValueError("reading MLP directions as tokens needs a Llama-style MLP with down_proj")
    w_down = cast(nn.Linear, block.mlp.down_proj).weight.float()  # (d_model, d_mlp)
    w_u = cast(Any, _unwrap(model)).get_output_embeddings().weight.float()  # (vocab, d_model)
    logits = w_u @ (w_down @ dirs.float().to(w_down.device))  # (vocab, n)
    return [[tokenizer.decode([t]) for t in logits[:, j].topk(n_tokens).indices.tolist()] for j in range(dirs.shape[1])]


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _gauss(ctx, n: int = 256, d: int = 1536) -> Tensor:
    return torch.from_numpy(ctx.rng(41).standard_normal((n, d)))


def _register_controls() -> None:

    control(
        "decorrelation",
        "negative",
        "256 isotropic random directions (d = 1536)",
        expect="1 ± 0.01",
        check=lambda v: abs(v - 1) <= 0.01,
    )(lambda ctx: decorrelation(_gauss(ctx)))
    control(
        "decorrelation",
        "positive",
        "a shared direction with half of each row's energy",
        expect="0.5 ± 0.02",
        check=lambda v: abs(v - 0.5) <= 0.02,
    )(lambda ctx: decorrelation(_gauss(ctx) + torch.from_numpy(ctx.rng(42).standard_normal(1536)) * 1.0))
    control("decor_loss", "negative", "orthogonal rows", expect="= 0", check=lambda v: abs(v) < 1e-12)(
        lambda ctx: decor_loss(torch.eye(64, dtype=torch.float64))
    )
    control(
        "decor_loss",
        "positive",
        "64 identical rows",
        expect="(N − 1)/N = 63/64 = 0.984375",
        check=lambda v: abs(v - 63 / 64) < 1e-9,
    )(lambda ctx: decor_loss(torch.ones(64, 8)))
    control(
        "mono_scale",
        "negative",
        "every input has the same activation vector",
        expect="= 0",
        check=lambda v: abs(v) < 1e-12,
    )(lambda ctx: mono_scale(_gauss(ctx)[:1].expand(256, -1).contiguous()))
    control(
        "mono_scale",
        "positive",
        "zero-mean activations that vary across inputs",
        expect="1 ± 0.01",
        check=lambda v: abs(v - 1) <= 0.01,
    )(lambda ctx: mono_scale(_gauss(ctx)))
    control(
        "act_variance", "positive", "rows of N(0, 4) entries", expect="4 ± 0.05", check=lambda v: abs(v - 4) <= 0.05
    )(lambda ctx: act_variance(2 * _gauss(ctx)))
    control("act_variance", "negative", "rows whose units are all equal", expect="= 0", check=lambda v: abs(v) < 1e-12)(
        lambda ctx: act_variance(_gauss(ctx)[:, :1].expand(-1, 1536).contiguous())
    )


def _register_weight_controls() -> None:
    control(
        "weight_proxy",
        "negative",
        "W ~ N(0, 1) (1536 × 576), bias ~ N(0, 1) independent: proxy / median‖W_k‖",
        expect="0 ± 0.15 (median of 1536 N(0, 1): sd 0.032)",
        check=lambda v: abs(v) <= 0.15,
    )(lambda ctx: _weight_proxy_ratio(ctx, planted=False))
    control(
        "weight_proxy",
        "positive",
        "the same W, bias 0.5 on every neuron: proxy / median‖W_k‖",
        expect="0.5 (to 1e-9)",
        check=lambda v: abs(v - 0.5) < 1e-9,
    )(lambda ctx: _weight_proxy_ratio(ctx, planted=True))


def _weight_proxy_ratio(ctx, planted: bool) -> float:
    """``weight_proxy`` in units of the median input-weight norm, for a random layer."""
    w = torch.from_numpy(ctx.rng(43).standard_normal((1536, 576)))
    b = torch.full((1536,), 0.5, dtype=w.dtype) if planted else torch.from_numpy(ctx.rng(44).standard_normal(1536))
    return weight_proxy(w, b) / float(w.norm(dim=1).median())


_register_controls()
_register_weight_controls()
