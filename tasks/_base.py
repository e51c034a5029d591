"""The task interface: what every preference task gives the harness (SPEC.md §3).

A task turns a source of rows into ``TaskData`` (train pairs, held-out pairs and prompts, concept
labels) and scores a policy on held-out data. Tasks register themselves with ``@register("name")``;
``tasks/__init__.py`` imports every module in the package, so one new file adds one task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from bench.lm import option_logprobs


class Pair(BaseModel):
    """One preference pair: the policy should prefer ``chosen`` over ``rejected`` after ``prompt``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    chosen: str
    rejected: str
    item: str = ""
    """The source item the pair was made from; texts of one item stay on one side of every split."""
    stratum: str = ""
    """Training batches interleave strata (e.g. which answer is true), so no batch leans on one label."""


class TaskData(BaseModel):
    """Everything a task built for one (model, seed): identical for every method of a suite."""

    model_config = ConfigDict(extra="forbid")
    task: str
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    eval_prompts: list[str]
    """Held-out prompts (un-templated) that the scorer generates from; also the proxy inputs."""
    eval_items: list[dict[str, Any]] = []
    """Task-specific held-out items (e.g. sycophancy claims with their options)."""
    concept_texts: list[str] = []
    concept_labels: list[int] = []
    """Binary concept label per concept text (1 = toxic / negative / sycophantic), for SAE probing."""
    concept_items: list[str] = []
    """The item each concept text was made from (``Pair.item`` names); the probe keeps an item's texts on
    one side of its split, and the SAE token set keeps them with the item's pairs."""
    provenance: dict[str, Any] = {}
    """Where the rows came from and which fields are model generations."""


class TaskConfig(BaseModel):
    """Fields every task config has; tasks subclass it and add their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = "embedded"
    """``embedded``, ``hf:<dataset-id>[:split]``, or a path to a .jsonl/.csv/.parquet file."""
    columns: dict[str, str] = {}
    """Column mapping for non-embedded sources, e.g. {prompt = "original_text"}."""
    n_train: int = 64
    n_eval: int = 64
    max_new_tokens: int = 20
    batch_size: int = 16
    use_chat_template: bool = True


C = TypeVar("C", bound=TaskConfig)


class Task(ABC, Generic[C]):
    """One preference task. ``build`` may use the base model (generated ``chosen`` replies)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[TaskConfig]]
    version: ClassVar[str] = "1"
    headline: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build(self, cfg: C, model, tokenizer, seed: int) -> TaskData: ...

    @abstractmethod
    def score(self, cfg: C, model, tokenizer, data: TaskData, *,
              pair_logps: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
        """Held-out task metrics, always including ``align_score`` (SPEC.md §3).

        ``pair_logps``: ``pair_logprobs(model, tokenizer, data.eval_pairs)`` when the caller already has
        them (the runner computes them for the preference metrics); a scorer built on the same
        log-probs (sycophancy's verdicts with the opinion) reuses them instead of running them again.
        """

    def concept_groups(self, data: TaskData) -> list[str] | None:
        """A group name per concept text (``data.concept_items``): texts made from one item share it, so
        the SAE probe keeps them on one side of its train/test split. None when the task names none."""
        return list(data.concept_items) if data.concept_items else None

    @classmethod
    def tiny_config(cls) -> TaskConfig:
        """Small sizes for tests and the ``smoke`` suite (tiny random model); tasks may override."""
        return cls.config_cls(n_train=4, n_eval=4, max_new_tokens=8, batch_size=8)

    @classmethod
    def describe(cls, cfg: TaskConfig | None = None) -> str:
        """One line for ``python -m bench list tasks``: name, source, sizes, headline metrics."""
        cfg = cfg if cfg is not None else cls.config_cls()
        head = ", ".join(cls.headline) or "align_score"
        return (f"{cls.name}: source={cfg.source} n_train={cfg.n_train} n_eval={cfg.n_eval} "
                f"max_new_tokens={cfg.max_new_tokens} chat_template={cfg.use_chat_template}; metrics: {head}")


TASKS: dict[str, type[Task]] = {}


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    def add(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} already registered by {TASKS[name].__module__}")
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


def pair_logprobs(model, tokenizer, pairs: list[Pair], *, batch_size: int = 16,
                  use_chat_template: bool = True) -> tuple[Tensor, Tensor]:
    """(log π(y_w | x), log π(y_l | x)) per pair, in nats, float64.

    ``bench.lm.option_logprobs`` with options (chosen, rejected): the prompt runs once for both replies.
    """
    lp = option_logprobs(model, tokenizer, [p.prompt for p in pairs], [(p.chosen, p.rejected) for p in pairs],
                         batch_size=batch_size, use_chat_template=use_chat_template)
    return torch.from_numpy(lp[:, 0].copy()), torch.from_numpy(lp[:, 1].copy())


def preference_metrics(policy, tokenizer, pairs: list[Pair], *, beta: float = 0.1, reference=None,
                       reference_logps: tuple[Tensor, Tensor] | None = None,
                       policy_logps: tuple[Tensor, Tensor] | None = None, batch_size: int = 16,
                       use_chat_template: bool = True) -> dict[str, float]:
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
    kw = dict(batch_size=batch_size, use_chat_template=use_chat_template)
    pol_w, pol_l = _checked(policy_logps, len(pairs), "policy_logps") or pair_logprobs(policy, tokenizer, pairs, **kw)
    if reference_logps is not None:
        ref_w, ref_l = _checked(reference_logps, len(pairs), "reference_logps")
    elif reference is not None:
        ref_w, ref_l = pair_logprobs(reference, tokenizer, pairs, **kw)
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            ref_w, ref_l = pair_logprobs(policy, tokenizer, pairs, **kw)
    else:
        ref_w, ref_l = pol_w, pol_l
    margin = beta * ((pol_w - ref_w) - (pol_l - ref_l))
    acc = (margin > 0).double() + 0.5 * (margin == 0).double()
    lens_w = torch.tensor([max(1, len(tokenizer(p.chosen, add_special_tokens=False)["input_ids"])) for p in pairs])
    lens_l = torch.tensor([max(1, len(tokenizer(p.rejected, add_special_tokens=False)["input_ids"])) for p in pairs])
    return {"pref_acc": float(acc.mean()), "reward_margin": float(margin.mean()),
            "logp_chosen": float((pol_w / lens_w).mean()), "logp_rejected": float((pol_l / lens_l).mean())}


def _checked(logps: tuple[Tensor, Tensor] | None, n: int, name: str) -> tuple[Tensor, Tensor] | None:
    if logps is not None and (len(logps[0]) != n or len(logps[1]) != n):
        raise ValueError(f"{name} hold {len(logps[0])}/{len(logps[1])} values for {n} pairs")
    return logps


PROXY_INPUTS = "heldout-prompt+chosen/last-token"
"""What the neuron proxies read (part of the proxies and train stage keys, so changing it recomputes)."""


def proxy_pairs(data: TaskData, n: int) -> list[Pair]:
    """The proxies' N held-out texts (SPEC §4): the first ``n`` held-out pairs, each read as its prompt
    (formatted as in training) followed by its chosen reply; z_i is taken at the reply's last token,
    the position DecPO regularises in training sequences. Never trained on (held-out split).
    """
    return list(data.eval_pairs[:n])


def sae_documents(data: TaskData) -> tuple[list[str], list[str]]:
    """The task's token set for SAEs and each text's item group, deduplicated in a fixed order:
    prompt + chosen and prompt + rejected of every train and held-out pair, the held-out prompts, then
    the concept texts. Texts of one item (``Pair.item``; a held-out prompt belongs to the pair it
    prompts; ``concept_items``) share a group, so the store's split keeps them on one side.

    The same texts for every method of a task, so SAEs differ only by the model that reads them.
    """
    docs: dict[str, str] = {}
    prompt_item: dict[str, str] = {}
    for p in data.train_pairs + data.eval_pairs:
        item = p.item or p.prompt
        prompt_item.setdefault(p.prompt, item)
        docs.setdefault(f"{p.prompt}\n{p.chosen}", item)
        docs.setdefault(f"{p.prompt}\n{p.rejected}", item)
    for prompt in data.eval_prompts:
        docs.setdefault(prompt, prompt_item.get(prompt, prompt))
    items = data.concept_items or list(data.concept_texts)
    for text, item in zip(data.concept_texts, items):
        docs.setdefault(text, item)
    kept = {t: g for t, g in docs.items() if t.strip()}
    return list(kept), list(kept.values())


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
    from bench.controls import control

    control("pref_acc", "negative", "policy = reference + symmetric noise", expect="0.5 ± 0.03",
            check=lambda v: abs(v - 0.5) <= 0.03)(lambda ctx: _pref(ctx, 0.0)["pref_acc"])
    control("pref_acc", "positive", "chosen log-prob raised by 2 nats", expect="≥ 0.99",
            check=lambda v: v >= 0.99)(lambda ctx: _pref(ctx, 2.0)["pref_acc"])
    control("reward_margin", "negative", "policy = reference + symmetric noise", expect="|margin| ≤ 0.005",
            check=lambda v: abs(v) <= 0.005)(lambda ctx: _pref(ctx, 0.0)["reward_margin"])
    control("reward_margin", "positive", "chosen log-prob raised by 2 nats (β = 0.1)", expect="0.2 ± 0.005",
            check=lambda v: abs(v - 0.2) <= 0.005)(lambda ctx: _pref(ctx, 2.0)["reward_margin"])


_register_controls()
