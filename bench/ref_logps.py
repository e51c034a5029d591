"""Reference log-probs computed once and shared by every DPO-family method of a (task, seed).

A DPO-family loss needs, for every training pair, the frozen reference's summed log-probs of the chosen
and the rejected reply, log π_ref(y|x) = Σ_t log π_ref(y_t | x, y_<t) (nats). The reference is the base
model for every method (the adapter-disabled policy under LoRA, a frozen copy under full fine-tuning),
so DPO, its A/A control, L1-Reg, DecPO and the paper-code DecPO of one task and seed — which train on the
same pairs, only in another order or with another regulariser — need the same numbers. With
``share_ref_logps = true`` a method's trainer reads them through TRL's own precomputation
(``precompute_ref_log_probs``) from a content-keyed memo in the results folder (``<out>/memo/ref_logps/``),
computing only the rows no earlier method of the run has computed.

Keys. A memo file holds one *scope*: the reference model's identity (``bench.identity``, which hashes
local weights by content), TRL's truncation (``max_length``, ``truncation_mode``), ``ld_alpha`` and the
loss type. Inside it a row is keyed by the blake2b of its token ids (prompt, chosen, rejected) — the exact
input of the reference forward — so another order, a repeated pair or a method that tokenises the same
texts hits it, and a changed chat template or tokenizer misses it.

Precision. Shared log-probs equal the per-step ones up to float rounding (another batch, so other padding:
|Δ| ≲ 1e-4 nats on SmolLM2); ``tests/test_ref_logps.py`` bounds the difference in the trained policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.io import file_lock, write_json


def row_key(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> str:
    """blake2b-128 (hex) of one training row's token ids."""
    payload = json.dumps([list(prompt_ids), list(chosen_ids), list(rejected_ids)], separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass
class RefLogpsMemo:
    """The memo of one results folder: ``folder/<scope hash>.json`` = {"scope": …, "rows": {key: [c, r]}}.

    ``computed`` and ``reused`` count the rows this memo computed and served (the train stage records them).
    Trainers compute under ``locked()`` (an exclusive ``flock`` per scope), so two workers that reach the same
    rows at once compute them once; a key's value is a function of the key and scope, never of the order.
    """

    folder: Path
    model: str
    """The reference model's identity (``facts.model``)."""
    computed: int = 0
    reused: int = 0
    _scope: str = field(default="", repr=False)

    def scoped(self, **settings: object) -> RefLogpsMemo:
        """This memo for one trainer's reference settings (max_length, truncation_mode, ld_alpha, loss)."""
        self._scope = json.dumps({"model": self.model, **settings}, sort_keys=True, default=str)
        return self

    @property
    def path(self) -> Path:
        if not self._scope:
            raise RuntimeError("RefLogpsMemo.scoped(...) must be called before it is read")
        digest = hashlib.blake2b(self._scope.encode(), digest_size=8).hexdigest()
        return self.folder / f"{digest}.json"

    def locked(self) -> AbstractContextManager[None]:
        """Hold ``<scope file>.lock`` exclusively (blocking) inside the block."""
        return file_lock(self.path)

    def load(self) -> dict[str, list[float]]:
        if not self.path.is_file():
            return {}
        stored = json.loads(self.path.read_text(encoding="utf-8"))
        if stored.get("scope") != self._scope:  # a hash collision: treat as empty, never serve it
            return {}
        return stored["rows"]

    def add(self, rows: dict[str, list[float]]) -> None:
        merged = {**self.load(), **rows}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"scope": self._scope, "rows": merged})

    def lookup(self, keys: Iterable[str]) -> tuple[dict[str, list[float]], list[str]]:
        """(every stored row of this scope, the keys still missing in first-seen order, deduplicated)."""
        stored = self.load()
        missing = list(dict.fromkeys(k for k in keys if k not in stored))
        return stored, missing
