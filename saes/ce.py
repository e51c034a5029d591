"""CE score of an SAE spliced into the model's forward (SPEC.md §5), over a store's held-out documents.

``ce_losses`` runs three forwards per batch — clean, SAE spliced at the hook, hook zero-ablated — and
averages next-token CE over the positions whose token is a held-out (non-duplicate) store row, as in
``sae_lens.evals.get_recons_loss``. The blocks below the hook are identical in the three forwards and run
once per batch (``captured_block_input`` / ``resumed_at``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.controls import control
from bench.core.errors import ConfigError
from bench.core.hooks import spliced
from bench.core.lm import decoder_layers
from saes.activations import collect_activations
from saes.metrics import sae_ce_score
from saes.store import ActivationStore


def _positions(store: ActivationStore, rows: slice) -> dict[int, np.ndarray]:
    """document → positions of its stored rows in ``rows``."""
    doc_idx, pos = np.asarray(store.doc_index[rows]), np.asarray(store.positions[rows]).astype(np.int64)
    order = np.argsort(doc_idx, kind="stable")
    docs, starts = np.unique(doc_idx[order], return_index=True)
    return dict(zip(docs.tolist(), np.split(pos[order], starts[1:])))


def _heldout_batches(
    store: ActivationStore,
    docs: list[int],
    batch_size: int,
    device,
    crop: int | None = None,
    count_duplicates: bool = False,
) -> Iterator[tuple]:
    """(ids, attention mask, stored mask, counted mask) for held-out documents (first ``crop`` tokens),
    right-padded. Stored = every stored position (the SAE is spliced there); counted = the held-out
    positions (duplicates too with ``count_duplicates``)."""
    held = _positions(store, store.heldout)
    dup = _positions(store, slice(store.n_train + store.n_heldout, store.acts.shape[0]))
    empty = np.zeros(0, dtype=np.int64)
    pad = store.manifest["pad_token_id"]
    for s in range(0, len(docs), batch_size):
        batch = docs[s : s + batch_size]
        toks = [store.doc(d)[:crop] for d in batch]
        width = max(map(len, toks))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        stored = torch.zeros((len(batch), width), dtype=torch.bool)
        counted = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (d, t) in enumerate(zip(batch, toks)):
            ids[i, : len(t)] = torch.tensor(t)
            att[i, : len(t)] = 1
            h, r = held.get(d, empty), dup.get(d, empty)
            for mask, p in (
                (stored, np.concatenate([h, r])),
                (counted, np.concatenate([h, r]) if count_duplicates else h),
            ):
                mask[i, torch.from_numpy(p[p < len(t)])] = True
        yield ids.to(device), att.to(device), stored.to(device), counted.to(device)


class _Passthrough(torch.nn.Module):
    """Stands in for a block below the resumed one: hands its input hidden states on, computing nothing."""

    def __init__(self, block: torch.nn.Module, tuple_out: bool):
        super().__init__()
        self.tuple_out = tuple_out
        if hasattr(block, "attention_type"):  # models that pick a mask per block read it
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.tuple_out else hidden_states


@contextlib.contextmanager
def captured_block_input(model, layer: int) -> Iterator[dict]:
    """Record the hidden states entering block ``layer`` (``box["hidden"]``) and whether blocks return tuples."""
    block, box = decoder_layers(model)[layer], {}

    def pre(_mod, args, kwargs):
        box["hidden"] = args[0] if args else kwargs["hidden_states"]

    def post(_mod, _inp, out):
        box["tuple_out"] = isinstance(out, tuple)

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    try:
        yield box
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def resumed_at(model, layer: int, hidden: torch.Tensor, tuple_out: bool) -> Iterator[None]:
    """Inside the block a forward skips blocks 0..layer−1 and feeds ``hidden`` into block ``layer``.

    Embeddings, masks and position embeddings are still made by the model's own forward, so blocks
    ``layer``… compute exactly what they compute in a full forward whose block ``layer`` input is
    ``hidden`` (``captured_block_input`` of a full forward on the same batch).
    """
    blocks = decoder_layers(model)
    saved = [blocks[i] for i in range(layer)]

    def swap(_mod, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[layer].register_forward_pre_hook(swap, with_kwargs=True)
    try:
        for i, block in enumerate(saved):
            blocks[i] = _Passthrough(block, tuple_out)
        yield
    finally:
        handle.remove()
        for i, block in enumerate(saved):
            blocks[i] = block


@torch.no_grad()
def ce_losses(
    model,
    store: ActivationStore,
    sae,
    *,
    layer: int,
    hook: str,
    max_docs: int | None = None,
    batch_size: int = 16,
    crop: int | None = None,
    share_prefix: bool = True,
    count_duplicates: bool = False,
) -> tuple[float, float, float, int]:
    """Mean next-token CE (clean, SAE spliced, zero-ablated) over held-out documents, and the token count.

    As in ``sae_lens.evals.get_recons_loss``: the SAE replaces the hooked output at every stored
    (non-special) position, zero-ablation zeroes every position, and the loss at position t (predicting
    t+1) counts when token t is a held-out token of the store (each distinct prefix once; with
    ``count_duplicates`` every stored token, as SAELens counts). With ``share_prefix`` the blocks below
    ``layer``, identical in the three forwards, run once per batch (the clean forward); the spliced and
    zero-ablated forwards resume at block ``layer`` from its recorded input (same numbers as three full
    forwards).
    """
    docs = store.heldout_docs()
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))[:max_docs]]  # fixed random subset
    docs.sort(key=lambda d: len(store.doc(d)))  # less padding
    device = next(model.parameters()).device
    sums, count = torch.zeros(3, dtype=torch.float64), 0
    was_training = model.training
    model.eval()
    try:
        for ids, att, kept, counted in _heldout_batches(store, docs, batch_size, device, crop, count_duplicates):
            target = counted[:, :-1] & att[:, 1:].bool()

            def with_sae(o, kept=kept):
                rec = sae.decode(sae.encode(o.float().to(sae.W_dec.device))).to(o.device, o.dtype)
                return torch.where(kept[..., None], rec, o)

            box: dict = {}
            for i, fn in enumerate((None, with_sae, torch.zeros_like)):
                with contextlib.ExitStack() as ctx:
                    if fn is None and share_prefix and layer > 0:
                        box = ctx.enter_context(captured_block_input(model, layer))
                    if fn is not None:
                        ctx.enter_context(spliced(model, layer=layer, hook=hook, fn=fn))
                        if "hidden" in box:
                            ctx.enter_context(resumed_at(model, layer, box["hidden"], box["tuple_out"]))
                    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
                ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                sums[i] += ce[target].double().sum().cpu()
            count += int(target.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("no held-out token has a next token to predict; use longer texts")
    clean, with_sae_ce, zero = (sums / count).tolist()
    return clean, with_sae_ce, zero, count


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
class _FixedSAE(torch.nn.Module):
    """A stand-in SAE whose reconstruction is ``scale`` × the input (1 = perfect, 0 = zero ablation)."""

    def __init__(self, d: int, scale: float):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.zeros(1, d), requires_grad=False)
        self.scale = scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale


def _ce_score(ctx, scale: float) -> float:
    import tempfile
    from pathlib import Path

    model, tok = ctx.tiny_model()
    texts = [
        f"item {i}: the {w} sat on the mat and looked at the {v} for a while"
        for i, (w, v) in enumerate(
            zip(["cat", "dog", "fox", "owl", "bee", "cow"] * 4, ["sun", "moon", "rain", "tree"] * 6)
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(collect_activations(model, tok, texts, layer=1, out_dir=Path(tmp) / "s", seed=0))
        clean, sae, zero, _ = ce_losses(model, store, _FixedSAE(store.d_in, scale), layer=1, hook="mlp.up_proj")
    return sae_ce_score(clean, sae, zero)


def _register_controls() -> None:

    control(
        "sae_ce_score",
        "negative",
        "SAE that reconstructs zero (tiny model)",
        expect="= 0",
        check=lambda v: abs(v) < 1e-6,
    )(lambda ctx: _ce_score(ctx, 0.0))
    control(
        "sae_ce_score",
        "positive",
        "SAE that reconstructs its input exactly (tiny model)",
        expect="= 1",
        check=lambda v: abs(v - 1) < 1e-6,
    )(lambda ctx: _ce_score(ctx, 1.0))


_register_controls()
