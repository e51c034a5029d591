"""The models a run keeps in memory: the base model per seed, the current policy, and the base model's
held-out pair log-probs per data stage (the reference of every method of a task).

Caches are keyed by content (seed, stage keys), never by the order jobs run in, so a job computes the same
numbers whether or not another job ran before it. The held-out reference log-probs are also kept on disk
(``<out>/memo/eval_ref_logps/``), so another worker or a resumed run reads them instead of recomputing them:
the same float64 values the computation gives (JSON round-trips a float exactly).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, cast

import torch

from bench.align import load_policy
from bench.core.io import file_lock, stable_hash, write_json
from bench.core.lm import n_layers
from bench.core.preference import pair_logprobs
from bench.identity import resolve_revision
from bench.models import load_model, random_init


class ModelPool:
    def __init__(self, suite, store, device: str = "auto"):
        self.suite, self.store, self.device = suite, store, device
        self._base: dict[int, tuple[Any, Any]] = {}
        self._policy: tuple[str, Any] | None = None
        self._reference: dict[Path, Any] = {}

    def base(self, seed: int):
        """(model, tokenizer) of the suite's base model, loaded once (per seed for tiny models, whose weights
        depend on it)."""

        m = self.suite.model
        key = seed if m.id.startswith("tiny:") else 0
        if key not in self._base:
            revision = None
            if not m.id.startswith(("tiny:", "embedded:")) and not Path(m.id).expanduser().exists():
                revision = resolve_revision(m.id, m.revision) or m.revision  # the commit the stage keys hold
            self._base[key] = load_model(m.id, seed=seed, device=self.device, tiny=m.tiny.spec(), revision=revision)
        return self._base[key]

    def n_layers(self, seed: int) -> int:
        """Depth of the base model (from the tiny config without building it)."""

        m = self.suite.model
        return m.tiny.n_layers if m.id.startswith("tiny:") else n_layers(self.base(seed)[0])

    def policy(self, facts, keys: dict[str, str]):
        """The job's policy: the base model, a re-initialised copy, or base + the train stage's adapter folded
        into the weights (W + (α/r)·BA, ``merge_and_unload``: the trained function up to float rounding,
        without LoRA's extra matmuls, ~1.3× faster forwards on CPU)."""

        model, tok = self.base(facts.job.seed)
        kind = facts.method.policy
        if kind == "base":
            return model, tok
        key = keys["train"] if kind == "trained" else f"random_init-{facts.job.seed}"
        if self._policy is None or self._policy[0] != key:
            self._policy = None
            if kind == "random_init":
                pol = random_init(model, facts.job.seed)
            else:
                pol = load_policy(copy.deepcopy(model), self.store.path(key) / "policy")
                pol = cast(Any, pol).merge_and_unload() if hasattr(pol, "merge_and_unload") else pol
            self._policy = (key, pol.eval())
        return self._policy[1], tok

    def forget_policy(self) -> None:
        self._policy = None

    def remember_reference(self, data_key: str, seed: int, pairs, kw: dict, logps, *, version: str) -> None:
        """The base model's log-probs of the held-out ``pairs`` of a data stage (its eval stage computed them
        with ``kw``)."""
        path = self._reference_file(data_key, self.base(seed)[0], seed, pairs, kw, version)
        self._reference[path] = logps
        with file_lock(path):
            self._save_reference(path, logps)

    def reference_logps(self, data_key: str, seed: int, pairs, kw: dict, *, version: str):
        """The base model's pair log-probs of ``pairs`` (the data stage ``data_key``), computed once per
        results folder: read from this process's memory, else from the disk memo, else computed (under a
        lock, so two workers compute them once) and written there."""
        model, tok = self.base(seed)
        path = self._reference_file(data_key, model, seed, pairs, kw, version)
        if path in self._reference:
            return self._reference[path]
        with file_lock(path):
            logps = self._load_reference(path)
            if logps is None:
                logps = pair_logprobs(model, tok, pairs, **kw)
                self._save_reference(path, logps)
        self._reference[path] = logps
        return logps

    def _reference_file(self, data_key: str, model, seed: int, pairs, kw: dict, version: str) -> Path:
        """``<out>/memo/eval_ref_logps/<stable_hash of the scope>.json``, also this process's memory key. The
        scope is the data stage key (which holds the base model's identity), the pairs' texts (a data stage
        rebuilt under the same key on another machine can sample other pairs), the batching, the device type
        and dtype, the seed of a tiny model (whose weights depend on it) and the eval stage's version (bumped
        when its computation changes)."""
        param = next(model.parameters())
        scope = {
            "data": data_key,
            "pairs": stable_hash([[p.prompt, p.chosen, p.rejected] for p in pairs], 32),
            "kw": kw,
            "eval_version": version,
            "device": param.device.type,
            "dtype": str(param.dtype),
            "seed": seed if self.suite.model.id.startswith("tiny:") else None,
        }
        return Path(self.store.out) / "memo" / "eval_ref_logps" / f"{stable_hash(scope, 32)}.json"

    @staticmethod
    def _load_reference(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not path.is_file():
            return None
        chosen, rejected = json.loads(path.read_text(encoding="utf-8"))
        return torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)

    @staticmethod
    def _save_reference(path: Path, logps) -> None:
        rows = [t.tolist() for t in logps]
        if all(math.isfinite(v) for row in rows for v in row):  # a non-finite value is left to the metrics' checks
            write_json(path, rows)
