"""Side-by-side speed figures, measured in one run on one machine with the same inputs: ``python -m bench perf``.

    python -m bench perf --quick                 # embedded SmolLM2-135M-Instruct, small sizes (minutes on CPU)
    python -m bench perf --device cuda           # larger sizes; bf16 model and matmul peak on a GPU

Every figure is the median of ``reps`` timed repetitions after ``warmup`` untimed ones, with min and
max; the two sides of a comparison are timed alternately (A B A B …, order rotated), so a change in
machine load hits both. Rows of ``<out>/perf.csv`` (``ratio_def`` says which way each ratio points):

- ``sae_pipeline`` / ``sae_pipeline_hf``: SAE throughput in training tokens/s = training_tokens / wall
  seconds of (activation collection + SAE training, save included). Ours: ``saes.activations.
  collect_activations`` + ``saes.train.train_sae``. Peer: SAELens's ``LanguageModelSAETrainingRunner``
  (constructed and run inside the timer) on the same model, layer, hook, token stream, architecture
  (topk), width, k, batch size, lr and token budget; wandb, checkpoints and compile off; the same
  special tokens excluded. ``sae_pipeline`` runs the runner on SAELens's default model class, a
  TransformerLens ``HookedTransformer`` converted from our loaded model, hooked at
  ``blocks.L.mlp.hook_pre_linear`` (= HF ``mlp.up_proj`` output; checked numerically, the relative error
  is in the notes). ``sae_pipeline_hf`` runs it on SAELens's ``AutoModelForCausalLM`` class
  (``HookedProxyLM`` around a copy of our HF model, hook ``model.layers.L.mlp.up_proj``). Both sides use
  ``normalize_activations="none"``: SAELens would otherwise spend extra LLM batches on the norm estimate.
  Ratio = ours / peer; goal ≥ 2.
- ``decpo_step``: seconds per optimiser step (forward + backward + clip + AdamW) of DecPO and of DPO on
  the same batch of pairs, same model copy, same LoRA, after each trainer has run ``warmup`` real steps.
  Ratio = DecPO / DPO; goal ≤ 1.10.
- ``proxies_one_pass``: seconds to collect every layer's last-token activations with one
  ``collect_last_token`` call over all layers (ours) vs one call per layer (peer). Ratio = peer / ours.
- ``dpo_mfu``: achieved FLOP/s of the DPO step vs the peak FLOP/s of an n×n matmul (2n³ FLOPs) in the
  model's dtype on the same device. DPO step FLOPs with LoRA = 6·N·T: policy forward 2·N·T, backward to
  the activations through the frozen base 2·N·T (LoRA weight gradients are negligible), reference
  forward (adapter disabled) 2·N·T; N = weights of every ``nn.Linear`` of the base model (LM head
  included), T = non-padding tokens of the batch (chosen + rejected). Attention-score FLOPs are left out
  (a few % at these lengths). Full fine-tuning would be 8·N·T. Ratio = achieved / peak (the MFU).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import itertools
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

log = logging.getLogger(__name__)

RatioDef = Literal["ours/peer", "peer/ours"]
COLUMNS = ("benchmark", "status", "ours", "peer", "unit", "ratio", "ratio_def", "goal", "met", "reps",
           "ours_min", "ours_max", "peer_min", "peer_max", "device", "notes")


class PerfSizes(BaseModel, extra="forbid", frozen=True, use_attribute_docstrings=True):
    """Input sizes and repetition counts of one perf run."""

    reps: int = Field(3, ge=1)
    """Timed repetitions per side; the figure is their median."""
    warmup: int = Field(1, ge=1)
    """Untimed repetitions (DPO: real trainer steps) before timing."""
    layer: int | float = 0.5
    """Hooked layer (index or fraction of depth) for the SAE and DecPO benchmarks."""
    sae_texts: int = Field(64, ge=4)
    """Texts collected for the SAE pipeline; the token budget is their train split, once."""
    sae_context: int = Field(64, ge=4)
    """Tokens per text (ours) and per packed window (SAELens)."""
    sae_batch: int = Field(256, ge=1)
    """SAE training batch (activations per step), both sides."""
    sae_expansion: int = Field(2, ge=1)
    """d_sae = expansion × d_in (topk), both sides."""
    sae_k: int = Field(32, ge=1)
    """Active latents per token (topk)."""
    collect_batch: int = Field(16, ge=1)
    """Texts per LLM forward while collecting (SAELens gets windows holding as many tokens)."""
    dpo_pairs: int = Field(2, ge=1)
    """Preference pairs in the fixed DPO/DecPO batch (2 rows each)."""
    dpo_max_length: int = Field(128, ge=16)
    """Max prompt + reply tokens of the DPO batch."""
    dpo_max_prompt: int = Field(64, ge=8)
    """Max prompt tokens of the DPO batch."""
    proxy_texts: int = Field(2, ge=2)
    """Texts whose last-token activations the proxy benchmark collects (chat-formatted)."""
    matmul_n: int | None = None
    """Side of the peak matmul; None = 2048 on CPU, 8192 on CUDA."""


QUICK = PerfSizes()
FULL = PerfSizes(reps=5, sae_texts=512, sae_batch=1024, sae_expansion=4, dpo_pairs=8, dpo_max_length=256,
                 dpo_max_prompt=128, proxy_texts=16)


@dataclass(frozen=True)
class PerfRow:
    """One line of perf.csv. ``status`` is ``ok`` or ``not run: <reason>`` (then the numbers are None)."""

    benchmark: str
    status: str
    unit: str = ""
    ratio_def: RatioDef | Literal[""] = ""
    goal: str = ""
    """``>=x`` or ``<=x`` on the ratio, or empty when the figure is reported without a goal."""
    ours: float | None = None
    peer: float | None = None
    ratio: float | None = None
    met: bool | None = None
    reps: int = 0
    ours_min: float | None = None
    ours_max: float | None = None
    peer_min: float | None = None
    peer_max: float | None = None
    device: str = ""
    notes: str = ""


def _row(benchmark: str, ours: list[float], peer: list[float], *, unit: str, ratio_def: RatioDef, goal: str,
         notes: str) -> PerfRow:
    """Medians, min/max of both sides; ratio from the medians as ``ratio_def`` says; ``met`` from ``goal``."""
    if ratio_def not in ("ours/peer", "peer/ours") or (goal and goal[:2] not in (">=", "<=")):
        raise ValueError(f"ratio_def {ratio_def!r} / goal {goal!r}: allowed 'ours/peer' or 'peer/ours', '>=x', '<=x', ''")
    o, p = statistics.median(ours), statistics.median(peer)
    ratio = o / p if ratio_def == "ours/peer" else p / o
    met = None if not goal else (ratio >= float(goal[2:]) if goal.startswith(">=") else ratio <= float(goal[2:]))
    return PerfRow(benchmark, "ok", unit, ratio_def, goal, o, p, ratio, met, len(ours), min(ours), max(ours),
                   min(peer), max(peer), "", notes)

# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def alternate(sides: dict[str, Callable[[], float]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run every side ``warmup`` times untimed, then ``reps`` times each, interleaved with a rotating order.

    Each side returns the seconds it measured itself (so per-run setup stays outside the timer).
    """
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            out[n].append(sides[n]())
    return out


def device_label(device: torch.device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<model name> (<torch threads> threads)``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu:{cpu} ({torch.get_num_threads()} threads)"

# ----------------------------------------------------------------------------------------------- inputs


def perf_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` real short texts (SciQ question/answer claims shipped by sae-probes), in a seeded order."""
    from tasks.sources import read_embedded, seeded_order

    rows = read_embedded("perf", "36_sciq_tf")["prompt"].astype(str).tolist()
    if n > len(rows):
        raise ValueError(f"perf asks for {n} texts but 36_sciq_tf has {len(rows)}; lower the sizes")
    return [rows[i] for i in seeded_order(len(rows), seed)[:n]]


def perf_pairs(texts: Sequence[str], n: int):
    """``n`` preference pairs cut from ``texts``: prompt = one text, replies = two texts joined each."""
    from tasks._base import Pair

    if len(texts) < 5 * n:
        raise ValueError(f"{n} pairs need {5 * n} texts, got {len(texts)}")
    t = list(texts)
    return [Pair(prompt=t[5 * i], chosen=f"{t[5 * i + 1]} {t[5 * i + 2]}", rejected=f"{t[5 * i + 3]} {t[5 * i + 4]}")
            for i in range(n)]

# ----------------------------------------------------------------------------------------------- SAELens peers


def hooked_transformer(model: nn.Module, tokenizer):
    """A TransformerLens ``HookedTransformer`` with ``model``'s weights, built offline, unprocessed.

    This is ``HookedTransformer.from_pretrained_no_processing(hf_model=model)`` minus its check of the
    name against TransformerLens's list of official models (SmolLM2 is not on it). TransformerLens reads
    the architecture from a config.json; the GGUF-converted config has no ``architectures`` entry, so a
    copy of the config naming the loaded class is written to a temporary folder.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    dtype = next(model.parameters()).dtype
    hf_cfg = json.loads(model.config.to_json_string()) | {"architectures": [type(model).__name__]}
    with tempfile.TemporaryDirectory(prefix="monobench-tl-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(hf_cfg))
        cfg = loading.get_pretrained_model_config(folder, hf_cfg=hf_cfg, fold_ln=False, dtype=dtype,
                                                  device=str(next(model.parameters()).device))
        state = loading.get_pretrained_state_dict(folder, cfg, model, dtype=dtype)
    ht = HookedTransformer(cfg, tokenizer, move_to_device=False)
    ht.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)
    ht.move_model_modules_to_device()
    return ht.eval()


@torch.no_grad()
def tl_hook_error(model: nn.Module, ht, input_ids: torch.Tensor, layer: int, tl_hook: str) -> float:
    """‖TL hook − HF ``mlp.up_proj`` output‖ / ‖HF output‖ on ``input_ids`` (full forward of both)."""
    from saes.activations import hooked_activations

    hf = hooked_activations(model, input_ids, torch.ones_like(input_ids), layer=layer, hook="mlp.up_proj").float()
    _, cache = ht.run_with_cache(input_ids, names_filter=[tl_hook], stop_at_layer=layer + 1)
    return float((cache[tl_hook].float() - hf).norm() / hf.norm().clamp_min(1e-12))


def token_rows(docs: list[list[int]], context: int) -> list[list[int]]:
    """Documents concatenated and cut into rows of ``context`` tokens (SAELens's pretokenized layout)."""
    flat = [t for d in docs for t in d]
    return [flat[i:i + context] for i in range(0, len(flat) - context + 1, context)]


def saelens_runner_config(cfg, sae_cfg, *, hook_name: str, model_class: str, device: str, out: Path,
                          special_ids: list[int], store_prompts: int):
    """SAELens runner config matching ``train_sae``'s trainer settings; no wandb, checkpoints or compile.

    ``store_prompts`` context windows per LLM forward should hold as many tokens as one of our
    collection batches. The mixing buffer is the smallest that holds one training batch (SAELens's
    default of 20 windows would make it forward more tokens than it trains on); both favour the peer.
    """
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    return LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name="monobench-perf", model_class_name=model_class, hook_name=hook_name,
        dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=cfg.context_length,
        prepend_bos=False, exclude_special_tokens=special_ids, training_tokens=cfg.n_steps * cfg.batch_size,
        train_batch_size_tokens=cfg.batch_size, store_batch_size_prompts=store_prompts,
        n_batches_in_buffer=math.ceil(cfg.batch_size / cfg.context_length), device=device,
        dtype="float32", lr=cfg.lr, lr_end=cfg.lr, lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps, lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=max(cfg.n_steps + 1, 2),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate, logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, output_path=str(out),
        compile_llm=False, compile_sae=False, verbose=False, seed=0)


def run_saelens(runner_cfg, model, rows: list[list[int]], device: torch.device) -> float:
    """Seconds to construct and run SAELens's ``LanguageModelSAETrainingRunner`` (signal handlers restored)."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAETrainingRunner

    dataset = Dataset.from_dict({"tokens": rows})
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():  # it compares dataset rows with tokens and copies tensors; both harmless
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            return _timed(lambda: LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset,
                                                                 override_model=model).run(), device)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)

# ----------------------------------------------------------------------------------------------- benchmarks


def _sae_config(sizes: PerfSizes, training_tokens: int | None):
    from saes.config import SAEConfig

    return SAEConfig(architecture="topk", expansion=sizes.sae_expansion, k=sizes.sae_k, batch_size=sizes.sae_batch,
                     training_tokens=training_tokens or sizes.sae_batch, normalize_activations="none",
                     max_texts=sizes.sae_texts, context_length=sizes.sae_context,
                     collect_batch_size=sizes.collect_batch)


def _sae_budget(model, tokenizer, texts: list[str], layer: int, sizes: PerfSizes, work: Path):
    """SAEConfig whose token budget is every train token of ``texts`` once (floored to whole batches), and d_in."""
    from saes.activations import ActivationStore, collect_activations

    store = ActivationStore(collect_activations(model, tokenizer, texts, layer=layer, out_dir=work / "probe",
                                                cfg=_sae_config(sizes, None)))
    n_train, d_in = store.n_train, store.d_in
    shutil.rmtree(work / "probe")
    if n_train < sizes.sae_batch:
        raise ValueError(f"{n_train} train tokens from {len(texts)} texts is less than one SAE batch "
                         f"({sizes.sae_batch}); raise sae_texts or lower sae_batch")
    return _sae_config(sizes, n_train // sizes.sae_batch * sizes.sae_batch), d_in


def _saelens_peers(model, tokenizer, layer: int, probe_ids: torch.Tensor) -> dict[str, tuple]:
    """{row name: (wrapped model, hook name, model_class_name, note)}; a failed peer maps to (note,) only."""
    from sae_lens.load_model import HookedProxyLM

    from bench.lm import hook_module
    from saes.activations import module_path

    peers: dict[str, tuple] = {}
    tl_hook = f"blocks.{layer}.mlp.hook_pre_linear"
    try:
        ht = hooked_transformer(model, tokenizer)
        err = tl_hook_error(model, ht, probe_ids, layer, tl_hook)
        if err > (1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2):
            raise RuntimeError(f"TransformerLens {tl_hook} differs from HF mlp.up_proj (relative error {err:.2g})")
        peers["sae_pipeline"] = (ht, tl_hook, "HookedTransformer",
                                 f"peer=SAELens runner on HookedTransformer {tl_hook} (rel. err vs up_proj {err:.1e})")
    except Exception as e:  # reported as a 'not run' row, never as a number
        log.warning("SAELens HookedTransformer peer unavailable", exc_info=True)
        peers["sae_pipeline"] = (f"not run: TransformerLens conversion failed: {type(e).__name__}: {e}",)
    hf_hook = module_path(model, hook_module(model, layer))
    peers["sae_pipeline_hf"] = (HookedProxyLM(copy.deepcopy(model), tokenizer, hook_names=[hf_hook]), hf_hook,
                                "AutoModelForCausalLM", f"peer=SAELens runner on AutoModelForCausalLM "
                                f"(HookedProxyLM around a copy of the HF model) {hf_hook}")
    return peers


def bench_sae_pipeline(model, tokenizer, texts: list[str], layer: int, sizes: PerfSizes, device: torch.device,
                       work: Path) -> list[PerfRow]:
    """``sae_pipeline`` (peer: HookedTransformer) and ``sae_pipeline_hf`` (peer: HookedProxyLM) rows."""
    from saes.activations import collect_activations, tokenize_docs
    from saes.config import to_sae_lens_config
    from saes.train import train_sae

    cfg, d_in = _sae_budget(model, tokenizer, texts, layer, sizes, work)
    docs = tokenize_docs(tokenizer, texts, max_length=cfg.context_length, use_chat_template=False)
    rows = token_rows([ids for ids, _ in docs], cfg.context_length)   # the same token stream, packed
    mean_len = sum(len(ids) for ids, _ in docs) / len(docs)
    store_prompts = max(1, round(cfg.collect_batch_size * mean_len / cfg.context_length))
    peers = _saelens_peers(model, tokenizer, layer, torch.tensor(rows[:2], device=device))
    runs = itertools.count()
    collect_s: list[float] = []

    def ours() -> float:
        d = work / f"ours-{next(runs)}"
        collect_s.append(_timed(lambda: collect_activations(model, tokenizer, texts, layer=layer,
                                                            out_dir=d / "store", cfg=cfg), device))
        t = collect_s[-1] + _timed(lambda: train_sae(d / "store", cfg, d / "sae", device=device), device)
        shutil.rmtree(d)
        return t

    def peer(name: str) -> Callable[[], float]:
        wrapped, hook, cls, _ = peers[name]

        def run() -> float:
            d = work / f"{name}-{next(runs)}"
            runner_cfg = saelens_runner_config(cfg, to_sae_lens_config(cfg, d_in, device=str(device)), hook_name=hook,
                                               model_class=cls, device=str(device), out=d,
                                               special_ids=sorted(tokenizer.all_special_ids),
                                               store_prompts=store_prompts)
            t = run_saelens(runner_cfg, wrapped, rows, device)
            shutil.rmtree(d, ignore_errors=True)
            return t
        return run

    times = alternate({"ours": ours} | {n: peer(n) for n, p in peers.items() if len(p) == 4}, sizes.reps,
                      sizes.warmup)
    tok = cfg.n_steps * cfg.batch_size
    common = (f"layer {layer} mlp.up_proj, topk k={cfg.k}, d_sae={cfg.d_sae(d_in)}, batch {cfg.batch_size}, "
              f"{tok} training tokens ({len(texts)} texts, mean {mean_len:.0f} tokens); LLM batch: ours "
              f"{cfg.collect_batch_size} texts, peer {store_prompts} windows of {cfg.context_length}; ours spends "
              f"{statistics.median(collect_s[-sizes.reps:]) / statistics.median(times['ours']):.0%} collecting; ")
    return [_row(n, [tok / t for t in times["ours"]], [tok / t for t in times[n]], unit="tokens/s",
                 ratio_def="ours/peer", goal=">=2", notes=common + p[-1]) if n in times else
            PerfRow(n, p[0], unit="tokens/s", ratio_def="ours/peer", goal=">=2") for n, p in peers.items()]


def _optimizer_step(trainer, batch) -> None:
    """What the HF Trainer does per optimiser step: loss + backward, grad clipping, AdamW, scheduler."""
    trainer.training_step(trainer.model, batch)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad()


def bench_decpo_step(model, tokenizer, pairs, layer: int, sizes: PerfSizes, device: torch.device,
                     work: Path) -> tuple[PerfRow, list[float], dict]:
    """``decpo_step`` row, the DPO step times and the batch facts (tokens) for the MFU row.

    Each trainer (own deep copy of ``model``) first runs ``warmup`` real ``train()`` steps, which also
    builds its optimizer and scheduler; then both step alternately on the same collated batch.
    """
    from bench.align import DecPOMethodConfig, DPOMethodConfig, make_trainer

    common = dict(batch_size=len(pairs), max_steps=sizes.warmup, max_length=sizes.dpo_max_length,
                  max_prompt_length=sizes.dpo_max_prompt, warmup=0.0, eval_every=10**6)
    cfgs = {"dpo": DPOMethodConfig(**common), "decpo": DecPOMethodConfig(**common)}
    trainers = {}
    with warnings.catch_warnings():  # TRL 1.16 reads a deprecated transformers attribute every step
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        for name, cfg in cfgs.items():
            trainers[name] = make_trainer(name, cfg, copy.deepcopy(model), tokenizer, pairs, work / name, seed=0,
                                          layer=layer)
            trainers[name].train()
            trainers[name].model.train()
        batch = next(iter(trainers["dpo"].get_train_dataloader()))
        decor = trainers["decpo"]._metrics["train"]["reg/decor"]   # one value appended per DecPO loss
        before = len(decor)
        times = alternate({n: (lambda tr=tr: _timed(lambda: _optimizer_step(tr, batch), device))
                           for n, tr in trainers.items()}, sizes.reps, warmup=0)
    trainers["decpo"]._capture.remove()
    if len(decor) - before != sizes.reps:
        raise RuntimeError("the DecPO penalty was not computed on every timed step; the timing would be DPO's")
    mask = batch["attention_mask"]
    facts = {"tokens": int(mask.sum()), "padded": int(mask.numel()), "rows": int(mask.shape[0])}
    c = cfgs["decpo"]
    notes = (f"{len(pairs)} pairs ({facts['rows']} rows, {facts['tokens']} tokens, {facts['padded']} padded), "
             f"LoRA r={c.lora_r} on {','.join(c.lora_targets)}, DecPO layer {layer} lambda={c.lam} "
             f"normalize={c.normalize}; step = loss+backward+clip+AdamW on one fixed batch")
    row = _row("decpo_step", times["decpo"], times["dpo"], unit="s/step", ratio_def="ours/peer", goal="<=1.10",
               notes=notes)
    return row, times["dpo"], facts


def bench_proxies(model, tokenizer, texts: list[str], sizes: PerfSizes, device: torch.device) -> PerfRow:
    """``proxies_one_pass``: one ``collect_last_token`` over all layers vs one call per layer."""
    from bench.lm import n_layers
    from bench.proxies import collect_last_token

    layers = list(range(n_layers(model)))
    one = collect_last_token(model, tokenizer, texts, layers)
    single = collect_last_token(model, tokenizer, texts, [layers[-1]])[layers[-1]]
    if not torch.allclose(one[layers[-1]], single, rtol=1e-4, atol=1e-4):
        raise RuntimeError("one-pass and per-layer collection disagree on the last layer")
    times = alternate({"one": lambda: _timed(lambda: collect_last_token(model, tokenizer, texts, layers), device),
                       "loop": lambda: _timed(lambda: [collect_last_token(model, tokenizer, texts, [l])
                                                       for l in layers], device)}, sizes.reps, warmup=0)
    return _row("proxies_one_pass", times["one"], times["loop"], unit="s", ratio_def="peer/ours", goal="",
                notes=f"{len(layers)} layers, {len(texts)} texts (chat-formatted), mlp.up_proj last token; "
                      "peer = one collect_last_token call per layer")


def peak_matmul(n: int, dtype: torch.dtype, device: torch.device, reps: int) -> list[float]:
    """FLOP/s of ``reps`` timed n×n @ n×n matmuls (2n³ FLOPs each; several per timing on CUDA)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    inner = 20 if device.type == "cuda" else 1

    def run():
        for _ in range(inner):
            a @ b

    _timed(run, device)
    return [2 * n**3 * inner / _timed(run, device) for _ in range(max(reps, 3))]


def bench_mfu(model, dpo_times: list[float], facts: dict, sizes: PerfSizes, device: torch.device) -> PerfRow:
    """``dpo_mfu``: 6·N·T / DPO step time against the peak matmul FLOP/s (see the module docstring)."""
    n_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    flops = 6 * n_params * facts["tokens"]
    dtype = next(model.parameters()).dtype
    n = sizes.matmul_n or (8192 if device.type == "cuda" else 2048)
    peak = peak_matmul(n, dtype, device, sizes.reps)
    return _row("dpo_mfu", [flops / t for t in dpo_times], peak, unit="FLOP/s", ratio_def="ours/peer", goal="",
                notes=f"DPO step FLOPs = 6*N*T = 6*{n_params}*{facts['tokens']} = {flops:.3g} (LoRA); "
                      f"peak = {n}x{n} {str(dtype).removeprefix('torch.')} matmul")

# ----------------------------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[PerfRow], path: Path) -> Path:
    """Write ``rows`` to ``path`` (temp file + rename), columns ``COLUMNS``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".perf.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in asdict(r).items()})
    os.replace(tmp, path)
    return path


def format_table(rows: Sequence[PerfRow]) -> str:
    """Plain-text table: benchmark, ours, peer (median [min–max]), unit, ratio, goal, met or status."""
    def cell(med, lo, hi):
        return "" if med is None else f"{med:.3g} [{lo:.3g}–{hi:.3g}]"

    table = [("benchmark", "ours", "peer", "unit", "ratio", "goal", "met")]
    for r in rows:
        if r.status != "ok":
            table.append((r.benchmark, r.status, "", r.unit, "", r.goal, ""))
            continue
        table.append((r.benchmark, cell(r.ours, r.ours_min, r.ours_max), cell(r.peer, r.peer_min, r.peer_max),
                      r.unit, f"{r.ratio:.3g} ({r.ratio_def})", r.goal or "-",
                      "-" if r.met is None else ("yes" if r.met else "NO")))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _guard(names: tuple[str, ...], fn: Callable[[], list[PerfRow]]) -> list[PerfRow]:
    """Run one benchmark; a failure becomes ``not run: <reason>`` rows (traceback logged), never a number."""
    try:
        return fn()
    except Exception as e:
        log.warning("perf benchmark %s failed", "/".join(names), exc_info=True)
        reason = f"not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return [PerfRow(n, reason) for n in names]


def _benchmarks(model, tok, texts: list[str], layer: int, sizes: PerfSizes, dev: torch.device, work: Path):
    """(row names, thunk) per benchmark, in run order; the MFU row reuses the DPO step times."""
    dpo: dict = {}

    def decpo() -> list[PerfRow]:
        row, dpo["times"], dpo["facts"] = bench_decpo_step(model, tok, perf_pairs(texts, sizes.dpo_pairs), layer,
                                                           sizes, dev, work)
        return [row]

    def mfu() -> list[PerfRow]:
        if not dpo:
            raise RuntimeError("it needs the DPO step times of decpo_step, which did not run")
        return [bench_mfu(model, dpo["times"], dpo["facts"], sizes, dev)]

    return [(("sae_pipeline", "sae_pipeline_hf"),
             lambda: bench_sae_pipeline(model, tok, texts[:sizes.sae_texts], layer, sizes, dev, work)),
            (("proxies_one_pass",), lambda: [bench_proxies(model, tok, texts[:sizes.proxy_texts], sizes, dev)]),
            (("decpo_step",), decpo), (("dpo_mfu",), mfu)]


def run_perf(out: Path, quick: bool, device: str = "auto", *, model_spec: str = "embedded:smollm2-135m-instruct",
             sizes: PerfSizes | None = None, echo: bool = True) -> list[PerfRow]:
    """Run every benchmark on ``model_spec``, write ``<out>/perf.csv``, print the table; return the rows."""
    from bench.lm import n_layers, resolve_layer
    from bench.models import load_model, resolve_device

    sizes = sizes or (QUICK if quick else FULL)
    dev = resolve_device(device)
    model, tok = load_model(model_spec, device=str(dev))
    layer = resolve_layer(sizes.layer, n_layers(model))
    texts = perf_texts(max(sizes.sae_texts, 5 * sizes.dpo_pairs, sizes.proxy_texts))
    label, out, rows, t0 = device_label(dev), Path(out), [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".perf-", dir=out) as tmp:
        for names, fn in _benchmarks(model, tok, texts, layer, sizes, dev, Path(tmp)):
            load = f"load1={os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
            log.info("perf: %s (%s)", "/".join(names), load)
            for r in _guard(names, fn):
                rows.append(PerfRow(**(asdict(r) | {"device": label, "notes": "; ".join(x for x in (r.notes, load) if x)})))
    path = write_csv(rows, out / "perf.csv")
    if echo:
        print(f"perf on {model_spec}, {label}, {'quick' if quick else 'full'} sizes, "
              f"{time.perf_counter() - t0:.0f}s → {path}")
        print(format_table(rows))
    return rows
