"""Forward-hook mechanics shared by the proxies, the DecPO penalty, activation collection and the CE score.

- ``StopForward`` / ``hooked_activations`` / ``hooked_sites``: read one module's (or several modules') output in
  one forward and skip everything after the last one read.
- ``spliced``: replace a module's output by ``fn(output)`` inside a ``with`` block.
- ``LastTokenCapture``: keep ``output[b, last non-padding token of row b]`` for the next forward (the
  DecPO/L1 penalty's Z).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from bench.core.errors import ConfigError
from bench.core.lm import hook_module, last_token_index, right_padded


class StopForward(Exception):
    """Raised by a forward hook once everything a caller reads has been computed, to skip the rest."""


def _first_tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


Site = tuple[int, str]
"""(block index, hook module path inside the block), e.g. (15, "mlp.up_proj")."""


@torch.no_grad()
def hooked_activations(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, layer: int, hook: str
) -> torch.Tensor:
    """Output of ``hook`` in block ``layer`` (batch, seq, d_in); the forward stops right after it."""
    return hooked_sites(model, input_ids, attention_mask, [(layer, hook)])[(layer, hook)]


@torch.no_grad()
def hooked_sites(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, sites: Sequence[Site]
) -> dict[Site, torch.Tensor]:
    """{site: output of that hooked module (batch, seq, d)} from one forward, stopped once every site is read."""
    wanted = list(dict.fromkeys(sites))
    box: dict[Site, torch.Tensor] = {}

    def make_capture(site: Site):
        def capture(_mod, _inp, out):
            if site in box:  # a module called again before the last site: keep its first output, as one site does
                return
            box[site] = _first_tensor(out) if len(wanted) == 1 else _first_tensor(out).clone()  # later ops run on
            if len(box) == len(wanted):  # nothing later is read: skip the rest of the model
                raise StopForward

        return capture

    handles = [hook_module(model, *site).register_forward_hook(make_capture(site)) for site in wanted]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if missing := [s for s in wanted if s not in box]:
        raise RuntimeError(f"the forward pass never reached {', '.join(f'{h!r} of layer {l}' for l, h in missing)}")
    return box


@torch.no_grad()
def read_last_tokens(
    model, rows: Sequence[Sequence[int]], layers: Sequence[int], *, hook: str, pad_id: int, batch_size: int = 16
) -> dict[int, Tensor]:
    """{layer: (N, d) float32 CPU} — the ``hook`` output of every layer in ``layers`` at each row's last token.

    Rows are right-padded in batches; one forward per batch, stopped after the last hooked layer.
    """
    device = next(model.parameters()).device
    store: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    current: dict[str, Tensor] = {}
    last_layer = max(layers)

    def make_hook(layer: int):
        def fn(_mod, _inp, out):
            rows = torch.arange(out.shape[0], device=out.device)
            store[layer].append(out[rows, current["last"].to(out.device)].float().cpu())
            if layer == last_layer:  # nothing later is read: skip the rest of the model and its LM head
                raise StopForward

        return fn

    handles = [hook_module(model, layer, hook).register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        for start in range(0, len(rows), batch_size):
            ids, mask = right_padded(rows[start : start + batch_size], pad_id, device)
            current["last"] = last_token_index(mask)
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(v) for layer, v in store.items()}


@contextlib.contextmanager
def spliced(model, *, layer: int, hook: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the hooked module's output o with fn(o) for every forward inside the block."""

    def replace(_mod, _inp, out):
        if isinstance(out, torch.Tensor):
            return fn(out)
        return (fn(out[0]), *out[1:])

    handle = hook_module(model, layer, hook).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


class LastTokenCapture:
    """Forward hook on ``module`` that keeps ``output[b, i_b]``, i_b = last non-padding position of row b.

    Call ``arm(attention_mask, input_ids, eos_id)`` before a forward; the first call of the module after
    that (with gradients enabled, when ``only_with_grad``) is captured and the hook disarms itself, so a
    recomputation under gradient checkpointing cannot overwrite it. ``take()`` returns the capture (or
    None) and disarms. Works for right and left padding: the index comes from the mask, never from
    pad-token ids. The read token must be ``eos_id`` (``bench.lm.READOUT``: TRL appends it after every
    reply); a row that ends in anything else was cut, and is an error rather than a silent other position.
    """

    def __init__(self, module: nn.Module, only_with_grad: bool = True):
        self.only_with_grad = only_with_grad
        self._mask: Tensor | None = None
        self._z: Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def arm(self, attention_mask: Tensor, input_ids: Tensor | None = None, eos_id: int | None = None) -> None:
        self._mask, self._z = attention_mask, None
        if input_ids is not None and eos_id is not None:
            idx = last_token_index(attention_mask)
            read = input_ids[torch.arange(input_ids.shape[0], device=input_ids.device), idx.to(input_ids.device)]
            if bad := (read != eos_id).nonzero().flatten().tolist():
                raise ConfigError(
                    f"batch rows {bad} do not end in the EOS token (id {eos_id}) the penalty reads: "
                    "they were cut by max_length; raise max_length"
                )

    def take(self) -> Tensor | None:
        z, self._z, self._mask = self._z, None, None
        return z

    def remove(self) -> None:
        self._handle.remove()

    def _hook(self, _module: nn.Module, _inputs, output: Tensor) -> None:
        if self._mask is None or (self.only_with_grad and not torch.is_grad_enabled()):
            return
        if output.shape[:2] != self._mask.shape:
            raise ValueError(
                f"hooked output has shape {tuple(output.shape)} but the attention mask has shape "
                f"{tuple(self._mask.shape)}; prompt-learning adapters (virtual tokens) are not supported"
            )
        idx = last_token_index(self._mask.to(output.device))
        self._z = output[torch.arange(output.shape[0], device=output.device), idx]
        self._mask = None
