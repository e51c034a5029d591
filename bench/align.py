"""Preference optimisation on TRL + PEFT: the ``sft``, ``dpo``, ``decpo``, ``simpo`` and ``l1`` methods (SPEC.md §2).

Each method (``bench/methods/``) names its config class and how it builds its TRL trainer. ``train_policy`` trains
one policy and records training curves every ``eval_every`` steps.

Trainers: ``sft`` → ``trl.SFTTrainer`` (prompt–completion data, loss on the completion only);
``dpo`` → ``trl.DPOTrainer``; ``decpo`` / ``l1`` → subclasses in ``bench.decpo``; ``simpo`` →
``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no NLL term).
With LoRA (default) the DPO reference is the adapter-disabled policy, so no second model is kept.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from bench import dist
from bench.core.compat import labelled_positions_only, quiet_training, unpatch_fused_forward
from bench.core.errors import ConfigError, StoreError
from bench.core.lm import decoder_layers, resolve_layer, training_ids, training_prompt
from bench.core.task import Pair
from bench.decpo import CurveCallback, NoiseSeed
from bench.methods import METHODS, MethodConfig, TrainConfig
from bench.ref_logps import RefLogpsMemo

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
            raise ConfigError(
                f"{where}: the formatted prompt has {n_prompt} tokens > max_prompt_length = "
                f"{cfg.max_prompt_length}; raise max_prompt_length (prompts are never cut)"
            )
        if n_seq > cfg.max_length:
            raise ConfigError(
                f"{where}: prompt + reply + EOS has {n_seq} tokens > max_length = {cfg.max_length}; "
                "raise max_length (sequences are never cut)"
            )


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
    exactly max_steps × batch_size × grad_accum pairs, or ⌈epochs × len(pairs)⌉ without max_steps. A pair is
    one row (``pairs``, ``completion``) or two adjacent rows (``unpaired``: chosen labelled True, rejected
    False), so an ``unpaired`` method's batch holds 2 × batch_size rows."""
    from datasets import Dataset

    check_lengths(cfg, tokenizer, pairs, use_chat_template)
    n_rows = cfg.max_steps * cfg.batch_size * cfg.grad_accum if cfg.max_steps else math.ceil(cfg.epochs * len(pairs))
    rows: list[dict[str, Any]] = []
    for i in training_order([p.stratum for p in pairs], n_rows, seed + 1000 * cfg.noise_seed):
        p = pairs[i]
        prompt = training_prompt(tokenizer, p.prompt, use_chat_template)
        if METHODS[method].data == "completion":
            rows.append({"prompt": prompt, "completion": p.chosen})
        elif METHODS[method].data == "unpaired":  # KTO-style: each reply alone, labelled desirable or not
            rows.append({"prompt": prompt, "completion": p.chosen, "label": True})
            rows.append({"prompt": prompt, "completion": p.rejected, "label": False})
        else:
            rows.append({"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected})
    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------------------------- LoRA


_GPT2_ALIASES = {
    "q_proj": "c_attn",
    "k_proj": "c_attn",
    "v_proj": "c_attn",
    "up_proj": "c_fc",
    "gate_proj": "c_fc",
    "down_proj": "c_proj",
}


def lora_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Module names of ``targets`` present in ``model``; Llama names map to GPT-2's (c_attn, c_fc)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    out: list[str] = []
    for t in targets:
        hit = t if t in names else _GPT2_ALIASES.get(t) if _GPT2_ALIASES.get(t) in names else None
        if hit is None:
            raise ConfigError(
                f"LoRA target {t!r} is not a module of {type(model).__name__}; set lora_targets to "
                f"names it has (e.g. {sorted(n for n in names if 'proj' in n or n.startswith('c_'))})"
            )
        if hit not in out:
            out.append(hit)
    return out


def _peft_config(cfg: TrainConfig, model: nn.Module):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # PEFT annotates int; it only divides by r
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model, cfg.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


# ----------------------------------------------------------------------------------------------- trainers


def _common_args(cfg: TrainConfig, out_dir: Path, seed: int, device: torch.device, progress: bool) -> dict:
    """TRL/transformers arguments shared by every method. ``cfg.batch_size`` is the global batch: under a
    multi-process launcher (``bench/dist.py``) each process takes ``batch_size / world_size`` of it."""

    if cfg.batch_size % dist.world_size():
        raise ConfigError(
            f"batch_size = {cfg.batch_size} is not divisible by the {dist.world_size()} processes; "
            "choose a batch size that is a multiple of --nproc_per_node"
        )
    sched = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return dict(
        output_dir=str(out_dir / "trainer"),
        learning_rate=cfg.lr,
        max_steps=cfg.max_steps or -1,
        num_train_epochs=1,
        train_sampling_strategy="sequential",  # rows come in training_order
        per_device_train_batch_size=cfg.batch_size // dist.world_size(),
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup,
        lr_scheduler_type=sched,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=cfg.eval_every,
        disable_tqdm=not progress,
        bf16=False,  # float32 on every device: see bench.models.dtype_for
        fp16=False,
        use_cpu=device.type == "cpu",
        activation_checkpointing=cfg.gradient_checkpointing,
        max_length=cfg.max_length,
    )


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


@dataclass(frozen=True)
class TrainOptions:
    """``train_policy``'s keyword options."""

    layer: int | float = 0.5
    """The suite's [hook] layer (``cfg.layer`` overrides it)."""
    hook: str = "mlp.up_proj"
    eval_beta: float = 0.1
    """β of the curves' held-out preference metrics."""
    proxy_pairs: list[Pair] | None = None
    """Held-out pairs whose read-out activations give the curves' proxies (default: the held-out pairs)."""
    copy_model: bool = True
    """Leave the input model untouched (PEFT injects LoRA layers in place otherwise)."""
    progress: bool = False
    ref_memo: RefLogpsMemo | None = None
    """Where a method with ``share_ref_logps`` reads and adds its reference log-probs (``bench.ref_logps``)."""


def train_policy(
    method: str,
    cfg: MethodConfig,
    model: nn.Module,
    tokenizer,
    train_pairs: list[Pair],
    eval_pairs: list[Pair],
    out_dir: Path,
    seed: int,
    use_chat_template: bool = True,
    **options,
) -> TrainResult:
    """Train ``model`` with ``method`` on ``train_pairs``; curves use ``eval_pairs`` (never trained on).

    ``options`` are ``TrainOptions`` fields. Only ``out_dir`` is written to (the trainer's scratch folder;
    no checkpoints).
    """
    o = TrainOptions(**options)
    _check_method(method, cfg)
    n_layers = len(decoder_layers(model))
    if not METHODS[method].trains:
        return TrainResult(method, model, [], layer=resolve_layer(o.layer, n_layers), steps=0, seconds=0.0)
    if not train_pairs or not eval_pairs:
        raise ValueError(f"train_policy needs train and held-out pairs, got {len(train_pairs)} and {len(eval_pairs)}")
    assert isinstance(cfg, TrainConfig)  # every trained method's config_cls is a TrainConfig (_check_method)

    t0 = time.perf_counter()
    layer = resolve_layer(cfg.layer if cfg.layer is not None else o.layer, n_layers)
    policy_init = copy.deepcopy(model) if o.copy_model else model
    reference = _frozen_reference(cfg, model, o.copy_model)
    curve_sets = (
        train_pairs[: cfg.curve_pairs],
        eval_pairs[: cfg.curve_pairs],
        (o.proxy_pairs or eval_pairs)[: cfg.curve_prompts],
    )
    recorder = CurveCallback(
        tokenizer,
        *curve_sets,
        layer=layer,
        hook=o.hook,
        every=cfg.eval_every,
        beta=o.eval_beta,
        reference=reference,
        use_chat_template=use_chat_template,
    )
    kw: dict[str, Any] = dict(
        layer=layer, hook=o.hook, reference=reference, callbacks=[recorder], progress=o.progress, ref_memo=o.ref_memo
    )
    trainer = make_trainer(method, cfg, policy_init, tokenizer, train_pairs, out_dir, seed, use_chat_template, **kw)
    _train(trainer, reference)
    elapsed = time.perf_counter() - t0
    return TrainResult(method, trainer.model.eval(), recorder.curves(), layer, trainer.state.global_step, elapsed)


def _frozen_reference(cfg: TrainConfig, model: nn.Module, copy_model: bool) -> nn.Module | None:
    """Full fine-tuning: a frozen copy of the model is the reference (DPO loss and curves); LoRA: None."""
    if cfg.lora:
        return None
    reference = model if copy_model else copy.deepcopy(model)
    reference._monobench_grad_flags = {p: p.requires_grad for p in reference.parameters()}  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    return reference.eval().requires_grad_(False)


def _train(trainer, reference: nn.Module | None) -> None:
    """``trainer.train()``, then no hook or patched forward left behind, the reference handed back as it came."""
    try:
        with quiet_training(), labelled_positions_only():
            trainer.train()
    finally:
        if hasattr(trainer, "_capture"):
            trainer._capture.remove()
        unpatch_fused_forward(trainer.model)
        unpatch_fused_forward(reference)
        if reference is not None:
            for p, flag in reference.__dict__.pop("_monobench_grad_flags").items():
                p.requires_grad_(flag)


def _check_method(method: str, cfg: MethodConfig) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(METHODS))}")
    if type(cfg) is not METHODS[method].config_cls:
        raise TypeError(f"method {method!r} takes a {METHODS[method].config_cls.__name__}, got {type(cfg).__name__}")


def make_trainer(
    method: str,
    cfg: TrainConfig,
    model: nn.Module,
    tokenizer,
    train_pairs: list[Pair],
    out_dir: Path,
    seed: int,
    use_chat_template: bool = True,
    *,
    layer: int = 0,
    hook: str = "mlp.up_proj",
    reference: nn.Module | None = None,
    callbacks: list | None = None,
    progress: bool = False,
    ref_memo: RefLogpsMemo | None = None,
):
    """The TRL trainer ``train_policy`` uses, built but not run (``layer`` is a resolved index).

    With ``cfg.lora`` the model is wrapped by PEFT in place. ``reference`` is the frozen DPO reference
    for full fine-tuning (ignored by sft/simpo, and None with LoRA: the adapter-disabled policy is used).
    """
    _check_method(method, cfg)
    spec = METHODS[method]
    if not spec.trains:
        raise ValueError(f"method {method!r} is not trained; it has no trainer")
    assert spec.build is not None  # every trained method registers a build
    if not cfg.lora and spec.uses_reference and reference is None:
        raise ValueError("full fine-tuning with a DPO-family method needs `reference` (a frozen copy of the model)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    noise = NoiseSeed(seed + 1000 * cfg.noise_seed)
    with quiet_training(), labelled_positions_only():  # the reference precomputation runs inside build
        dataset = _datasets(method, cfg, tokenizer, train_pairs, use_chat_template, seed)
        kw: dict[str, Any] = dict(
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[noise, *(callbacks or [])],
            peft_config=_peft_config(cfg, model) if cfg.lora else None,
        )
        if getattr(cfg, "share_ref_logps", False):
            kw["ref_memo"] = ref_memo
        trainer = spec.build(
            cfg,
            model,
            reference if spec.uses_reference else None,
            _common_args(cfg, out_dir, seed, device, progress),
            kw,
            layer,
            hook,
        )
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
    cast(Any, policy).save_pretrained(directory)
    (directory / "monobench_policy.json").write_text(json.dumps({"kind": kind}))


def load_policy(base_model: nn.Module, directory: Path) -> nn.Module:
    """Inverse of ``save_policy``. With an adapter, LoRA layers are injected into ``base_model`` in place."""
    directory = Path(directory)
    meta = directory / "monobench_policy.json"
    if not meta.is_file():
        raise StoreError(f"{directory} has no monobench_policy.json; it was not written by save_policy")
    kind = json.loads(meta.read_text())["kind"]
    if kind == "lora":
        from peft import PeftModel

        with quiet_training():
            policy: nn.Module = PeftModel.from_pretrained(base_model, str(directory))
    elif kind == "full":
        from transformers import AutoModelForCausalLM

        p = next(base_model.parameters())
        policy = cast(nn.Module, AutoModelForCausalLM.from_pretrained(directory, dtype=p.dtype)).to(p.device)
    else:
        raise StoreError(f"{meta}: unknown policy kind {kind!r}; expected 'lora' or 'full'")
    return policy.eval()
