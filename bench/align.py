"""Preference optimisation on TRL + PEFT: the ``sft``, ``dpo``, ``decpo``, ``simpo`` and ``l1`` methods (SPEC.md §2).

Each method (``bench/methods/``) names its config class and how it builds its TRL trainer. ``train_policy`` trains
one policy and records training curves every ``eval_every`` steps.

Trainers: ``sft`` → ``trl.SFTTrainer`` (prompt–completion data, loss on the completion only);
``dpo`` → ``trl.DPOTrainer``; ``decpo`` / ``l1`` → subclasses in ``bench.decpo``; ``simpo`` →
``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no NLL term).
With LoRA (default) the DPO reference is the adapter-disabled policy, so no second model is kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback

from bench.lm import decoder_layers, resolve_layer, training_ids, training_prompt
from bench.methods import METHODS, MethodConfig, TrainConfig
from tasks._base import Pair

# ----------------------------------------------------------------------------------------------- data


def check_lengths(cfg: TrainConfig, tokenizer, pairs: list[Pair], use_chat_template: bool) -> None:
    """Raise if a training prompt exceeds ``max_prompt_length`` or prompt + reply + EOS exceeds ``max_length``.

    Nothing is ever cut: a cut prompt can lose what the pair is about (sycophancy's opinion sits at its
    start), and a cut reply loses the EOS token the penalty reads. The message names the first pair
    that does not fit, its item and its length.
    """
    for i, p in enumerate(pairs):
        n_prompt = len(tokenizer(text=training_prompt(tokenizer, p.prompt, use_chat_template))["input_ids"])
        n_seq = max(len(training_ids(tokenizer, p.prompt, r, use_chat_template)) for r in (p.chosen, p.rejected))
        where = f"training pair {i}{f' (item {p.item})' if p.item else ''}, prompt {p.prompt[:40]!r}"
        if n_prompt > cfg.max_prompt_length:
            raise ValueError(f"{where}: the formatted prompt has {n_prompt} tokens > max_prompt_length = "
                             f"{cfg.max_prompt_length}; raise max_prompt_length (prompts are never cut)")
        if n_seq > cfg.max_length:
            raise ValueError(f"{where}: prompt + reply + EOS has {n_seq} tokens > max_length = {cfg.max_length}; "
                             "raise max_length (sequences are never cut)")


def training_order(strata: list[str], n_rows: int, seed: int) -> list[int]:
    """Indices of ``n_rows`` training rows: epoch after epoch, each a fresh seeded shuffle that interleaves
    the strata round-robin (one row of each stratum in turn, in a shuffled stratum order per round), so a
    batch never leans on one stratum (e.g. one true answer). Without strata it is a plain seeded shuffle.
    """
    rng = np.random.default_rng([seed, 41])
    names = sorted(set(strata))
    out: list[int] = []
    while len(out) < n_rows:
        pools = {n: [i for i in rng.permutation(len(strata)).tolist() if strata[i] == n] for n in names}
        while any(pools.values()):
            for n in rng.permutation(names).tolist():
                if pools[n]:
                    out.append(pools[n].pop())
    return out[:n_rows]


def _datasets(method: str, cfg: TrainConfig, tokenizer, pairs: list[Pair], use_chat_template: bool, seed: int):
    """The training rows in monobench's own order (``training_order``; the trainer reads them sequentially):
    exactly max_steps × batch_size × grad_accum rows, or ⌈epochs × len(pairs)⌉ without max_steps."""
    from datasets import Dataset

    check_lengths(cfg, tokenizer, pairs, use_chat_template)
    n_rows = (cfg.max_steps * cfg.batch_size * cfg.grad_accum if cfg.max_steps
              else math.ceil(cfg.epochs * len(pairs)))
    rows = []
    for i in training_order([p.stratum for p in pairs], n_rows, seed + 1000 * cfg.noise_seed):
        p = pairs[i]
        prompt = training_prompt(tokenizer, p.prompt, use_chat_template)
        if METHODS[method].data == "completion":
            rows.append({"prompt": prompt, "completion": p.chosen})
        else:
            rows.append({"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected})
    return Dataset.from_list(rows)

# ----------------------------------------------------------------------------------------------- LoRA


_GPT2_ALIASES = {"q_proj": "c_attn", "k_proj": "c_attn", "v_proj": "c_attn", "up_proj": "c_fc",
                 "gate_proj": "c_fc", "down_proj": "c_proj"}


def lora_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Module names of ``targets`` present in ``model``; Llama names map to GPT-2's (c_attn, c_fc)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    out: list[str] = []
    for t in targets:
        hit = t if t in names else _GPT2_ALIASES.get(t) if _GPT2_ALIASES.get(t) in names else None
        if hit is None:
            raise ValueError(f"LoRA target {t!r} is not a module of {type(model).__name__}; set lora_targets to "
                             f"names it has (e.g. {sorted(n for n in names if 'proj' in n or n.startswith('c_'))})")
        if hit not in out:
            out.append(hit)
    return out


def _peft_config(cfg: TrainConfig, model: nn.Module):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(model, cfg.lora_targets), bias="none", task_type="CAUSAL_LM")

# ----------------------------------------------------------------------------------------------- trainers


def _common_args(cfg: TrainConfig, out_dir: Path, seed: int, device: torch.device, progress: bool) -> dict:
    """TRL/transformers arguments shared by every method. ``cfg.batch_size`` is the global batch: under a
    multi-process launcher (``bench/dist.py``) each process takes ``batch_size / world_size`` of it."""
    from bench import dist

    if cfg.batch_size % dist.world_size():
        raise ValueError(f"batch_size = {cfg.batch_size} is not divisible by the {dist.world_size()} processes; "
                         "choose a batch size that is a multiple of --nproc_per_node")
    sched = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return dict(output_dir=str(out_dir / "trainer"), learning_rate=cfg.lr, max_steps=cfg.max_steps or -1,
                num_train_epochs=1, train_sampling_strategy="sequential",  # rows come in training_order
                per_device_train_batch_size=cfg.batch_size // dist.world_size(),
                gradient_accumulation_steps=cfg.grad_accum, warmup_steps=cfg.warmup, lr_scheduler_type=sched,
                seed=seed, data_seed=seed, dataloader_num_workers=0, report_to=[], save_strategy="no",
                eval_strategy="no", logging_strategy="steps", logging_steps=cfg.eval_every,
                disable_tqdm=not progress, bf16=device.type == "cuda", fp16=False, use_cpu=device.type == "cpu",
                activation_checkpointing=cfg.gradient_checkpointing, max_length=cfg.max_length)


def _unpatch_forward(model: nn.Module | None) -> None:
    """Remove the instance-level ``forward`` TRL's fused LM head installs, restoring the class method."""
    if model is None:
        return
    for m in model.modules():
        fwd = m.__dict__.get("forward")
        code = getattr(getattr(fwd, "__func__", None), "__code__", None)  # functools.wraps renamed the function
        if code is not None and code.co_name == "_fused_forward":
            del m.__dict__["forward"]

class NoiseSeed(TrainerCallback):
    """Reseeds torch's RNG when training begins, after the trainer initialised the model (LoRA weights
    keep the job seed), so the dropout draws follow ``seed`` (the job seed + 1000 × ``noise_seed``)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_begin(self, args, state, control, **kw):
        torch.manual_seed(self.seed)

# ----------------------------------------------------------------------------------------------- entry point


@dataclass
class TrainResult:
    """A trained policy (PeftModel with LoRA, else the model) in eval mode, and its training curves."""

    method: str
    policy: nn.Module
    curves: list[dict[str, float]]
    """One row per recorded step: ``step``, ``train/*`` and ``eval/*`` preference metrics (β = eval_beta),
    ``eval/decpo_term`` (normalised DecPO term on the curve prompts), ``proxy/*`` at ``layer``, and the
    trainer's window averages ``trainer/*`` (loss, reward_margin, pref_acc, reg/decor or reg/l1)."""
    layer: int
    steps: int
    seconds: float


@contextlib.contextmanager
def labelled_positions_only():
    """Make TRL's fused LM head project only the labelled (completion) positions on CPU too.

    TRL 1.16 (``trl.trainer.utils.add_fused_lm_head``) scores only positions whose label is not −100
    on Triton devices, but every position (prompt and padding included) elsewhere, so that compiled
    backends such as Neuron keep fixed tile shapes. In eager CPU training that fixed shape buys
    nothing and costs the most: the 49152 × 576 head then runs on every prompt token, forward and
    backward — 40 % of a SmolLM2 DPO step. The masked positions' log-probs are zeroed either way, so
    the loss and gradients are the same function (float rounding aside); see tests/test_align.py.
    TRL decides per call through its module-level ``_use_triton``; we widen it to CPU for the duration
    of the ``with`` block (a no-op on TRL versions without that switch).
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def _no_checkpointing_rename_warning():
    """transformers 5 renamed ``is_gradient_checkpointing``; TRL 1.16 (each step) and PEFT (each
    ``PeftModel``) still read the old name, which only warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def quiet_libs():
    """No ``datasets`` progress bars, and no warning for the deprecated name TRL and PEFT read."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with _no_checkpointing_rename_warning():
            yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def train_policy(method: str, cfg: MethodConfig, model: nn.Module, tokenizer, train_pairs: list[Pair],
                 eval_pairs: list[Pair], out_dir: Path, seed: int, use_chat_template: bool = True, *,
                 layer: int | float = 0.5, hook: str = "mlp.up_proj", eval_beta: float = 0.1,
                 proxy_pairs: list[Pair] | None = None, copy_model: bool = True,
                 progress: bool = False) -> TrainResult:
    """Train ``model`` with ``method`` on ``train_pairs``; curves use ``eval_pairs`` (never trained on).

    ``layer``/``hook`` are the suite's [hook] defaults (``cfg.layer`` overrides the layer). With
    ``copy_model`` (default) the input model is left untouched (PEFT injects LoRA layers in place
    otherwise). Only ``out_dir`` is written to (the trainer's scratch folder; no checkpoints).
    """
    _check_method(method, cfg)
    if not METHODS[method].trains:
        return TrainResult(method, model, [], layer=resolve_layer(layer, len(decoder_layers(model))), steps=0,
                           seconds=0.0)
    if not train_pairs or not eval_pairs:
        raise ValueError(f"train_policy needs train and held-out pairs, got {len(train_pairs)} and {len(eval_pairs)}")
    from bench.decpo import CurveCallback

    t0 = time.perf_counter()
    layer_idx = resolve_layer(cfg.layer if cfg.layer is not None else layer, len(decoder_layers(model)))
    policy_init = copy.deepcopy(model) if copy_model else model
    reference, ref_flags = None, {}
    if not cfg.lora:  # full fine-tuning: a frozen copy is the reference (DPO loss and curves)
        reference = model if copy_model else copy.deepcopy(model)
        ref_flags = {p: p.requires_grad for p in reference.parameters()}
        reference.eval().requires_grad_(False)
    proxy_pairs = proxy_pairs or eval_pairs
    recorder = CurveCallback(tokenizer, train_pairs[:cfg.curve_pairs], eval_pairs[:cfg.curve_pairs],
                             proxy_pairs[:cfg.curve_prompts], layer=layer_idx, hook=hook, every=cfg.eval_every,
                             beta=eval_beta, reference=reference, use_chat_template=use_chat_template)
    trainer = make_trainer(method, cfg, policy_init, tokenizer, train_pairs, out_dir, seed, use_chat_template,
                           layer=layer_idx, hook=hook, reference=reference, callbacks=[recorder], progress=progress)
    try:
        with quiet_libs(), labelled_positions_only():
            trainer.train()
    finally:  # leave no hook or patched forward behind, and hand the caller's model back as it came
        if hasattr(trainer, "_capture"):
            trainer._capture.remove()
        _unpatch_forward(trainer.model)
        _unpatch_forward(reference)
        for p, flag in ref_flags.items():
            p.requires_grad_(flag)
    policy = trainer.model.eval()
    return TrainResult(method, policy, recorder.curves(), layer=layer_idx, steps=trainer.state.global_step,
                       seconds=time.perf_counter() - t0)


def _check_method(method: str, cfg: MethodConfig) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(METHODS))}")
    if type(cfg) is not METHODS[method].config_cls:
        raise TypeError(f"method {method!r} takes a {METHODS[method].config_cls.__name__}, got {type(cfg).__name__}")


def make_trainer(method: str, cfg: TrainConfig, model: nn.Module, tokenizer, train_pairs: list[Pair], out_dir: Path,
                 seed: int, use_chat_template: bool = True, *, layer: int = 0, hook: str = "mlp.up_proj",
                 reference: nn.Module | None = None, callbacks: list | None = None, progress: bool = False):
    """The TRL trainer ``train_policy`` uses, built but not run (``layer`` is a resolved index).

    With ``cfg.lora`` the model is wrapped by PEFT in place. ``reference`` is the frozen DPO reference
    for full fine-tuning (ignored by sft/simpo, and None with LoRA: the adapter-disabled policy is used).
    """
    _check_method(method, cfg)
    spec = METHODS[method]
    if not spec.trains:
        raise ValueError(f"method {method!r} is not trained; it has no trainer")
    if not cfg.lora and spec.uses_reference and reference is None:
        raise ValueError("full fine-tuning with a DPO-family method needs `reference` (a frozen copy of the model)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    noise = NoiseSeed(seed + 1000 * cfg.noise_seed)
    with quiet_libs():
        dataset = _datasets(method, cfg, tokenizer, train_pairs, use_chat_template, seed)
        kw = dict(train_dataset=dataset, processing_class=tokenizer, callbacks=[noise, *(callbacks or [])],
                  peft_config=_peft_config(cfg, model) if cfg.lora else None)
        trainer = spec.build(cfg, model, reference if spec.uses_reference else None,
                             _common_args(cfg, out_dir, seed, device, progress), kw, layer, hook)
    if not progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer

# ----------------------------------------------------------------------------------------------- save / load


def save_policy(policy: nn.Module, directory: Path) -> None:
    """Write the adapter only (PEFT) or the full model, plus ``monobench_policy.json`` saying which."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = "lora" if hasattr(policy, "peft_config") else "full"
    policy.save_pretrained(directory)
    (directory / "monobench_policy.json").write_text(json.dumps({"kind": kind}))


def load_policy(base_model: nn.Module, directory: Path) -> nn.Module:
    """Inverse of ``save_policy``. With an adapter, LoRA layers are injected into ``base_model`` in place."""
    directory = Path(directory)
    meta = directory / "monobench_policy.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{directory} has no monobench_policy.json; it was not written by save_policy")
    kind = json.loads(meta.read_text())["kind"]
    if kind == "lora":
        from peft import PeftModel

        with _no_checkpointing_rename_warning():
            policy = PeftModel.from_pretrained(base_model, str(directory))
    elif kind == "full":
        from transformers import AutoModelForCausalLM

        p = next(base_model.parameters())
        policy = AutoModelForCausalLM.from_pretrained(directory, dtype=p.dtype).to(p.device)
    else:
        raise ValueError(f"{meta}: unknown policy kind {kind!r}; expected 'lora' or 'full'")
    return policy.eval()
