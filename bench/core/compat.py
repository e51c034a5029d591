"""Every workaround for library behaviour, in one place, each gated on the version it was written for.

A patch whose target symbol is missing raises ``CompatError`` (never a silent no-op), and
``tests/test_compat.py`` calls every ``check_*`` so a library upgrade that moves a symbol fails CI loudly.

- ``labelled_positions_only`` — TRL's fused LM head projects every position on CPU (TRL 1.16).
- ``unpatch_fused_forward`` — TRL leaves an instance-level ``forward`` on the model after training.
- ``quiet_training`` — no ``datasets`` progress bars; TRL/PEFT read transformers 5's renamed
  ``is_gradient_checkpointing`` and only warn.
- ``added_forward_hooks`` — SAELens's ``HookedProxyLM`` registers hooks it keeps no handles to.
- ``save_gguf_loaded`` — transformers refuses ``save_pretrained`` on a model loaded from GGUF.
- ``gguf_parsed_once`` — transformers parses a GGUF file three times to load one model and its tokenizer,
  and rebuilds gguf's tensor-name map once per module.
- ``SharedRefDPOTrainer`` (``bench.decpo``) overrides TRL's private ``DPOTrainer._precompute_ref_logps`` to
  read and fill the shared reference log-prob memo (``bench.ref_logps``); ``check_trl`` requires it.
- ``hub_offline`` — TRL's trainers send telemetry to the hub unless huggingface_hub's constants say
  offline; those constants are read once, at import, from the environment.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.core.errors import MonobenchError

TESTED = {"trl": "1.16", "sae-lens": "6.54", "transformers": "5.24", "peft": "0.21"}
"""Library versions (major.minor) the patches below were written and tested for."""


class CompatError(MonobenchError, RuntimeError):
    """A library no longer has what a monobench workaround patches."""


def _require(dist: str, ok: bool, what: str) -> None:
    if not ok:
        raise CompatError(
            f"{dist} {version(dist)} has no {what}, which monobench patches (written for {dist} "
            f"{TESTED[dist]}.x, bench/core/compat.py); pin {dist}=={TESTED[dist]}.* or update the patch"
        )


def check_trl() -> None:
    import trl.trainer.utils as u

    _require("trl", callable(getattr(u, "_use_triton", None)), "trl.trainer.utils._use_triton")
    _require("trl", callable(getattr(u, "add_fused_lm_head", None)), "trl.trainer.utils.add_fused_lm_head")
    from trl import DPOTrainer

    _require(
        "trl",
        callable(getattr(DPOTrainer, "_precompute_ref_logps", None)),
        "trl.DPOTrainer._precompute_ref_logps",
    )


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """Make TRL's fused LM head project only the labelled (completion) positions on CPU too.

    TRL 1.16 (``trl.trainer.utils.add_fused_lm_head``) scores only positions whose label is not −100
    on Triton devices, but every position (prompt and padding included) elsewhere, so that compiled
    backends such as Neuron keep fixed tile shapes. In eager CPU training that fixed shape buys
    nothing and costs the most: the 49152 × 576 head then runs on every prompt token, forward and
    backward — 40 % of a SmolLM2 DPO step. The masked positions' log-probs are zeroed either way, so
    the loss and gradients are the same function (float rounding aside; tests/test_align.py). TRL
    decides per call through its module-level ``_use_triton``, widened to CPU inside the block.
    """
    import trl.trainer.utils as u

    check_trl()
    original = u._use_triton
    u._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        u._use_triton = original


def unpatch_fused_forward(model) -> None:
    """Remove the instance-level ``forward`` TRL's fused LM head installs, restoring the class method.

    TRL wraps it with ``functools.wraps``, so it is found by its code object's name ``_fused_forward``.
    """
    if model is None:
        return
    for m in model.modules():
        fwd = m.__dict__.get("forward")
        code = getattr(getattr(fwd, "__func__", None), "__code__", None)
        if code is not None and code.co_name == "_fused_forward":
            del m.__dict__["forward"]


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """No ``datasets`` progress bars, and no FutureWarning for ``is_gradient_checkpointing`` (renamed in
    transformers 5; TRL 1.16 reads it each step and PEFT per ``PeftModel``) — only inside the block."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def check_sae_lens() -> None:
    from sae_lens.load_model import HookedProxyLM

    _require("sae-lens", HookedProxyLM is not None, "sae_lens.load_model.HookedProxyLM")


@contextlib.contextmanager
def added_forward_hooks(module) -> Iterator[None]:
    """Remove, on exit, the forward hooks added to ``module`` inside the block.

    SAELens's ``HookedProxyLM`` registers its hooks for good and keeps no handles; torch exposes no
    public way to list a module's hooks, so the (private, long-stable) ``_forward_hooks`` dict is diffed.
    """
    check_sae_lens()
    if not isinstance(getattr(module, "_forward_hooks", None), dict):
        raise CompatError("torch.nn.Module has no _forward_hooks dict; update bench/core/compat.added_forward_hooks")
    before = set(module._forward_hooks)
    try:
        yield
    finally:
        for key in set(module._forward_hooks) - before:
            del module._forward_hooks[key]


def save_gguf_loaded(model, tokenizer, folder: Path) -> None:
    """Write a model loaded from GGUF (now plain float weights) as a normal safetensors checkpoint.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights go through safetensors
    and the config is written without its ``quantization_config`` marker.
    """
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def check_transformers_gguf() -> None:
    """transformers must look ``GGUFReader`` and ``get_tensor_name_map`` up in ``gguf`` at call time."""
    import inspect

    import gguf
    import transformers.modeling_gguf_pytorch_utils as g

    source = inspect.getsource(g)
    for name in ("GGUFReader", "get_tensor_name_map"):
        _require("transformers", callable(getattr(gguf, name, None)), f"gguf.{name}")
        looked_up = f"{name}(" in source and "from gguf import" in source and name not in vars(g)
        _require("transformers", looked_up, f"call-time gguf.{name} lookup")


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Inside the block, each GGUF file is parsed once and gguf's tensor-name map built once per (arch, layers).

    transformers 5.24 builds a fresh ``gguf.GGUFReader`` (a pure-Python walk over every metadata field —
    SmolLM2's 49k-token vocabulary and merges) for the config, the tokenizer and the weights, and calls
    ``gguf.get_tensor_name_map`` once per module; both are imported from ``gguf`` inside its functions, so
    memoising the two module attributes halves the one-time conversion (43 s → 21 s on a 2-core instance).
    The reader is read-only (memory-mapped), so sharing it changes no converted byte. Not thread-safe (it swaps
    module attributes): one conversion per process at a time, as ``bench.models.embedded_folder`` does.
    """
    import functools

    import gguf

    check_transformers_gguf()
    originals: dict[str, Callable[..., Any]] = {
        "GGUFReader": gguf.GGUFReader,
        "get_tensor_name_map": gguf.get_tensor_name_map,
    }
    for name, original in originals.items():
        setattr(gguf, name, functools.lru_cache(maxsize=16)(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def hub_offline() -> None:
    """No network from any library for the rest of the process: ``HF_HUB_OFFLINE`` and
    ``HF_HUB_DISABLE_TELEMETRY`` set in the environment (for what is imported later) and in
    huggingface_hub's already-read constants (for what was imported earlier). The runner calls it when a
    suite names no hub model or dataset, so the embedded default path is offline whatever the environment."""
    import os

    import huggingface_hub.constants as hub

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if not (hasattr(hub, "HF_HUB_OFFLINE") and hasattr(hub, "HF_HUB_DISABLE_TELEMETRY")):
        raise CompatError("huggingface_hub.constants has no HF_HUB_OFFLINE / HF_HUB_DISABLE_TELEMETRY")
    hub.HF_HUB_OFFLINE = hub.HF_HUB_DISABLE_TELEMETRY = True
