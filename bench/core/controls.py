"""Metric controls: every headline metric's negative and positive control, registered beside the metric.

A *negative control* feeds meaningless or shuffled input and must give the chance level (at the
nominal false-positive rate for a test); a *positive control* plants an effect that must be found.
The module that defines a metric registers its controls with ``@control``; ``python -m bench validate``
(``bench/validate.py``) imports the packages, runs every control and writes ``validation.csv``.

    @control("sae_frac_interpretable", "negative", "random latents, 0 % duplicated tokens",
             expect="rate ≤ 0.08", check=lambda v: v <= 0.08)
    def random_latents(ctx: ControlContext) -> float: ...

A control returns one number (``observed``); ``check`` decides ``pass``. ``quick=False`` marks the
controls that train models (left out of ``--quick``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bench.core.data import read_embedded
from bench.core.embed import embed


@dataclass(frozen=True)
class Control:
    metric: str
    kind: Literal["negative", "positive"]
    name: str
    expect: str
    check: Callable[[float], bool]
    run: Callable[[ControlContext], float]
    quick: bool = True


CONTROLS: list[Control] = []


def control(
    metric: str,
    kind: Literal["negative", "positive"],
    name: str,
    *,
    expect: str,
    check: Callable[[float], bool],
    quick: bool = True,
) -> Callable:
    """Register the decorated ``fn(ctx) -> float`` as a control of ``metric``."""

    def add(fn: Callable[[ControlContext], float]) -> Callable[[ControlContext], float]:
        if any(c.metric == metric and c.name == name for c in CONTROLS):
            raise ValueError(f"control {name!r} of {metric!r} is registered twice")
        CONTROLS.append(Control(metric, kind, name, expect, check, fn, quick))
        return fn

    return add


@dataclass
class ControlContext:
    """What controls share: a seeded generator (fresh per control), real texts and their embeddings."""

    seed: int = 0
    quick: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    tiny_model: Callable[[], tuple[Any, Any]] | None = None
    """(model, tokenizer) of a small seeded causal LM, for controls that need a forward pass (the caller —
    ``bench validate`` — supplies it; the core builds no model itself)."""

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def topic_contexts(self, per_topic: int = 300) -> tuple[list[str], np.ndarray]:
        """Real short contexts (12-word windows, deduplicated) and their topic: 0 = world news, 1 = sports
        news (sae-probes ``161``/``162_agnews``), 2 = Python code (``159_code_Python``); the same list for
        every control of a run."""
        if "topic_contexts" not in self.cache:
            self.cache["topic_contexts"] = _topic_contexts(per_topic, self.seed)
        return self.cache["topic_contexts"]

    def embeddings(self, texts: list[str]) -> np.ndarray:
        """MiniLM embeddings of ``texts`` (the MS encoder), cached per text list for the run."""
        key = f"emb:{hash(tuple(texts))}"
        if key not in self.cache:
            self.cache[key] = embed(texts)
        return self.cache[key]


def _topic_contexts(per_topic: int, seed: int) -> tuple[list[str], np.ndarray]:

    texts, topics = [], []
    for topic, name in enumerate(("161_agnews_0", "162_agnews_1", "159_code_Python")):
        df = read_embedded("validate", name)
        pos = df[df["target"] == 1]["prompt"].astype(str).tolist()
        rng = np.random.default_rng([seed, topic])
        got = 0
        for i in rng.permutation(len(pos)).tolist():
            words = pos[i].split()
            for start in range(0, max(1, len(words) - 12), 12):
                texts.append(" ".join(words[start : start + 12]))
                topics.append(topic)
                got += 1
            if got >= per_topic:
                break
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    return list(first), np.asarray([topics[i] for i in first.values()])
