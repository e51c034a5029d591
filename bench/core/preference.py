"""Preference log-probabilities and the DPO implicit-reward metrics of held-out pairs.

Example::

    python -c "from bench.core.preference import preference_metrics; help(preference_metrics)"
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor

from bench.core.controls import control
from bench.core.lm import option_logprobs
from bench.core.metrics import MetricSet, metric, register_metrics
from bench.core.task import Pair


@register_metrics
class PreferenceMetrics(MetricSet):
    """``preference_metrics`` of held-out pairs against the base model (not reported for the base model)."""

    group, where = "preference", "bench.core.preference.preference_metrics"
    pref_acc: float | None = metric(
        "held-out share of pairs with DPO implicit reward margin > 0 (ties ½)",
        better="higher",
        unit="fraction",
        headline=True,
    )
    reward_margin: float | None = metric(
        "held-out mean β·[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)]",
        better="higher",
        unit="nats × β",
        headline=True,
    )
    logp_chosen: float | None = metric(
        "mean per-token log-prob of held-out chosen replies under the policy", better="higher", unit="nats/token"
    )
    logp_rejected: float | None = metric(
        "mean per-token log-prob of held-out rejected replies under the policy", better="lower", unit="nats/token"
    )


def pair_logprobs(
    model, tokenizer, pairs: list[Pair], *, batch_size: int = 16, use_chat_template: bool = True
) -> tuple[Tensor, Tensor]:
    """(log π(y_w | x), log π(y_l | x)) per pair, in nats, float64.

    ``bench.lm.option_logprobs`` with options (chosen, rejected): the prompt runs once for both replies.
    """
    lp = option_logprobs(
        model,
        tokenizer,
        [p.prompt for p in pairs],
        [(p.chosen, p.rejected) for p in pairs],
        batch_size=batch_size,
        use_chat_template=use_chat_template,
    )
    return torch.from_numpy(lp[:, 0].copy()), torch.from_numpy(lp[:, 1].copy())


def preference_metrics(
    policy,
    tokenizer,
    pairs: list[Pair],
    *,
    beta: float = 0.1,
    reference=None,
    reference_logps: tuple[Tensor, Tensor] | None = None,
    policy_logps: tuple[Tensor, Tensor] | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
) -> dict[str, float]:
    """Held-out DPO implicit-reward metrics of ``policy`` against ``reference``.

    r(x, y) = β · (log π(y|x) − log π_ref(y|x)); m_i = r(x_i, y_w,i) − r(x_i, y_l,i).
    ``reward_margin`` = mean_i m_i (nats × β); ``pref_acc`` = mean_i [1{m_i > 0} + ½·1{m_i = 0}],
    so a policy identical to its reference (the ``base`` row) scores 0.5 and margin 0.
    The reference's log-probs are ``reference_logps`` (``pair_logprobs`` of the reference, computed
    once and shared by the methods of a task) if given, else those of ``reference``, else of the PEFT
    adapter-disabled policy if it has adapters, else the policy itself. ``policy_logps``: the policy's
    own ``pair_logprobs`` if the caller already has them. Also reports ``logp_chosen``/``logp_rejected``
    (mean per-token log-prob under the policy).
    """
    if not pairs:
        raise ValueError("preference_metrics needs at least one held-out pair")
    pol_w, pol_l = _checked(policy_logps, len(pairs), "policy_logps") or pair_logprobs(
        policy, tokenizer, pairs, batch_size=batch_size, use_chat_template=use_chat_template
    )
    if reference_logps is not None:
        ref_w, ref_l = _checked(reference_logps, len(pairs), "reference_logps")
    elif reference is not None:
        ref_w, ref_l = pair_logprobs(
            reference, tokenizer, pairs, batch_size=batch_size, use_chat_template=use_chat_template
        )
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            ref_w, ref_l = pair_logprobs(
                policy, tokenizer, pairs, batch_size=batch_size, use_chat_template=use_chat_template
            )
    else:
        ref_w, ref_l = pol_w, pol_l
    margin = beta * ((pol_w - ref_w) - (pol_l - ref_l))
    acc = (margin > 0).double() + 0.5 * (margin == 0).double()
    lens_w = torch.tensor([max(1, len(tokenizer(p.chosen, add_special_tokens=False)["input_ids"])) for p in pairs])
    lens_l = torch.tensor([max(1, len(tokenizer(p.rejected, add_special_tokens=False)["input_ids"])) for p in pairs])
    return {
        "pref_acc": float(acc.mean()),
        "reward_margin": float(margin.mean()),
        "logp_chosen": float((pol_w / lens_w).mean()),
        "logp_rejected": float((pol_l / lens_l).mean()),
    }


_Logps = TypeVar("_Logps", bound="tuple[Tensor, Tensor] | None")


def _checked(logps: _Logps, n: int, name: str) -> _Logps:
    if logps is not None and (len(logps[0]) != n or len(logps[1]) != n):
        raise ValueError(f"{name} hold {len(logps[0])}/{len(logps[1])} values for {n} pairs")
    return logps


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
class _NoTokenizer:
    """Tokenizer stand-in for ``preference_metrics`` on given log-probs (reply lengths of 1)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [0]}


def _pref(ctx, planted: float) -> dict[str, float]:
    rng = ctx.rng(61)
    n = 2000
    ref = (torch.from_numpy(rng.normal(-5, 1, n)), torch.from_numpy(rng.normal(-5, 1, n)))
    noise = (torch.from_numpy(rng.normal(0, 0.3, n)), torch.from_numpy(rng.normal(0, 0.3, n)))
    pol = (ref[0] + noise[0] + planted, ref[1] + noise[1])
    pairs = [Pair(prompt="p", chosen="c", rejected="r")] * n
    return preference_metrics(None, _NoTokenizer(), pairs, policy_logps=pol, reference_logps=ref)


def _register_controls() -> None:

    control(
        "pref_acc",
        "negative",
        "policy = reference + symmetric noise",
        expect="0.5 ± 0.03",
        check=lambda v: abs(v - 0.5) <= 0.03,
    )(lambda ctx: _pref(ctx, 0.0)["pref_acc"])
    control("pref_acc", "positive", "chosen log-prob raised by 2 nats", expect="≥ 0.99", check=lambda v: v >= 0.99)(
        lambda ctx: _pref(ctx, 2.0)["pref_acc"]
    )
    control(
        "reward_margin",
        "negative",
        "policy = reference + symmetric noise",
        expect="|margin| ≤ 0.005",
        check=lambda v: abs(v) <= 0.005,
    )(lambda ctx: _pref(ctx, 0.0)["reward_margin"])
    control(
        "reward_margin",
        "positive",
        "chosen log-prob raised by 2 nats (β = 0.1)",
        expect="0.2 ± 0.005",
        check=lambda v: abs(v - 0.2) <= 0.005,
    )(lambda ctx: _pref(ctx, 2.0)["reward_margin"])


_register_controls()
