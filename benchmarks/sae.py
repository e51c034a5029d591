"""The SAE-pipeline benchmark of ``python -m bench perf``: ours (collect once, stop at the hook, train with
SAELens's trainer) against SAELens's own ``LanguageModelSAETrainingRunner`` on the same work.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import shutil
import signal
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from bench.core.hooks import hooked_activations
from bench.core.lm import hook_module
from benchmarks.timing import PerfRow, PerfSizes, _row, _timed, alternate
from saes.activations import ActivationStore, collect_activations, module_path, tokenize_docs
from saes.config import SAEConfig, to_sae_lens_config
from saes.train import train_sae

log = logging.getLogger(__name__)


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
    hf_cfg = json.loads(cast(Any, model.config).to_json_string()) | {"architectures": [type(model).__name__]}
    with tempfile.TemporaryDirectory(prefix="monobench-tl-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(hf_cfg))
        cfg = loading.get_pretrained_model_config(
            folder, hf_cfg=hf_cfg, fold_ln=False, dtype=dtype, device=str(next(model.parameters()).device)
        )
        state = loading.get_pretrained_state_dict(folder, cfg, model, dtype=dtype)
    ht = HookedTransformer(cfg, tokenizer, move_to_device=False)
    ht.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    ht.move_model_modules_to_device()
    return ht.eval()


@torch.no_grad()
def tl_hook_error(model: nn.Module, ht, input_ids: torch.Tensor, layer: int, tl_hook: str) -> float:
    """‖TL hook − HF ``mlp.up_proj`` output‖ / ‖HF output‖ on ``input_ids`` (full forward of both)."""

    hf = hooked_activations(model, input_ids, torch.ones_like(input_ids), layer=layer, hook="mlp.up_proj").float()
    _, cache = ht.run_with_cache(input_ids, names_filter=[tl_hook], stop_at_layer=layer + 1)
    return float((cache[tl_hook].float() - hf).norm() / hf.norm().clamp_min(1e-12))


def token_rows(docs: list[list[int]], context: int) -> list[list[int]]:
    """Documents concatenated and cut into rows of ``context`` tokens (SAELens's pretokenized layout)."""
    flat = [t for d in docs for t in d]
    return [flat[i : i + context] for i in range(0, len(flat) - context + 1, context)]


def saelens_runner_config(
    cfg,
    sae_cfg,
    *,
    hook_name: str,
    model_class: str,
    device: str,
    out: Path,
    special_ids: list[int],
    store_prompts: int,
):
    """SAELens runner config matching ``train_sae``'s trainer settings; no wandb, checkpoints or compile.

    ``store_prompts`` context windows per LLM forward should hold as many tokens as one of our
    collection batches. The mixing buffer is the smallest that holds one training batch (SAELens's
    default of 20 windows would make it forward more tokens than it trains on); both favour the peer.
    """
    from sae_lens import LanguageModelSAERunnerConfig

    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="monobench-perf",
        model_class_name=model_class,
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        exclude_special_tokens=special_ids,
        store_batch_size_prompts=store_prompts,
        output_path=str(out),
        compile_sae=False,
        verbose=False,
        **runner_training_kwargs(cfg, device),
    )


def runner_training_kwargs(cfg, device: str) -> dict:
    """The settings every SAELens runner config of the perf rows shares with ``train_sae``'s trainer: token
    budget, batch, constant lr, dead-feature window, norm-estimate batches; no wandb, checkpoints or compile."""
    from sae_lens import LoggingConfig

    return dict(
        context_size=cfg.context_length,
        prepend_bos=False,
        training_tokens=cfg.n_steps * cfg.batch_size,
        train_batch_size_tokens=cfg.batch_size,
        n_batches_in_buffer=math.ceil(cfg.batch_size / cfg.context_length),
        device=device,
        dtype="float32",
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(cfg.n_steps + 1, 2),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        compile_llm=False,
        seed=0,
    )


def run_saelens(runner_cfg, model, rows: list[list[int]], device: torch.device, runner=None) -> float:
    """Seconds to construct and run ``runner`` (default: SAELens's ``LanguageModelSAETrainingRunner``) on
    ``runner_cfg`` over the token ``rows`` (signal handlers restored)."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAETrainingRunner

    runner = runner or LanguageModelSAETrainingRunner

    dataset = Dataset.from_dict({"tokens": rows})
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():  # it compares dataset rows with tokens and copies tensors; both harmless
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            return _timed(
                lambda: runner(runner_cfg, override_dataset=dataset, override_model=model).run(),
                device,
            )
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _sae_config(sizes: PerfSizes, training_tokens: int | None):

    return SAEConfig(
        architecture="topk",
        expansion=sizes.sae_expansion,
        k=sizes.sae_k,
        batch_size=sizes.sae_batch,
        training_tokens=training_tokens or sizes.sae_batch,
        normalize_activations="none",
        max_texts=sizes.sae_texts,
        context_length=sizes.sae_context,
        collect_batch_size=sizes.collect_batch,
    )


def _sae_budget(model, tokenizer, texts: list[str], layer: int, sizes: PerfSizes, work: Path):
    """SAEConfig whose token budget is every train token of ``texts`` once (floored to whole batches), and d_in."""

    store = ActivationStore(
        collect_activations(model, tokenizer, texts, layer=layer, out_dir=work / "probe", cfg=_sae_config(sizes, None))
    )
    n_train, d_in = store.n_train, store.d_in
    shutil.rmtree(work / "probe")
    if n_train < sizes.sae_batch:
        raise ValueError(
            f"{n_train} train tokens from {len(texts)} texts is less than one SAE batch "
            f"({sizes.sae_batch}); raise sae_texts or lower sae_batch"
        )
    return _sae_config(sizes, n_train // sizes.sae_batch * sizes.sae_batch), d_in


def _saelens_peers(model, tokenizer, layer: int, probe_ids: torch.Tensor) -> dict[str, tuple]:
    """{row name: (wrapped model, hook name, model_class_name, note)}; a failed peer maps to (note,) only."""
    from sae_lens.load_model import HookedProxyLM

    peers: dict[str, tuple] = {}
    tl_hook = f"blocks.{layer}.mlp.hook_pre_linear"
    try:
        ht = hooked_transformer(model, tokenizer)
        err = tl_hook_error(model, ht, probe_ids, layer, tl_hook)
        if err > (1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2):
            raise RuntimeError(f"TransformerLens {tl_hook} differs from HF mlp.up_proj (relative error {err:.2g})")
        peers["sae_pipeline"] = (
            ht,
            tl_hook,
            "HookedTransformer",
            f"peer=SAELens runner on HookedTransformer {tl_hook} (rel. err vs up_proj {err:.1e})",
        )
    except Exception as e:  # reported as a 'not run' row, never as a number
        log.warning("SAELens HookedTransformer peer unavailable", exc_info=True)
        peers["sae_pipeline"] = (f"not run: TransformerLens conversion failed: {type(e).__name__}: {e}",)
    hf_hook = module_path(model, hook_module(model, layer))
    peers["sae_pipeline_hf"] = (
        HookedProxyLM(copy.deepcopy(model), tokenizer, hook_names=[hf_hook]),
        hf_hook,
        "AutoModelForCausalLM",
        f"peer=SAELens runner on AutoModelForCausalLM (HookedProxyLM around a copy of the HF model) {hf_hook}",
    )
    return peers


def bench_sae_pipeline(
    model, tokenizer, texts: list[str], layer: int, sizes: PerfSizes, device: torch.device, work: Path
) -> list[PerfRow]:
    """``sae_pipeline`` (peer: HookedTransformer) and ``sae_pipeline_hf`` (peer: HookedProxyLM) rows."""

    cfg, d_in = _sae_budget(model, tokenizer, texts, layer, sizes, work)
    docs = tokenize_docs(tokenizer, texts, max_length=cfg.context_length, use_chat_template=False)
    rows = token_rows([ids for ids, _ in docs], cfg.context_length)  # the same token stream, packed
    mean_len = sum(len(ids) for ids, _ in docs) / len(docs)
    store_prompts = max(1, round(cfg.collect_batch_size * mean_len / cfg.context_length))
    peers = _saelens_peers(model, tokenizer, layer, torch.tensor(rows[:2], device=device))
    runs = itertools.count()
    collect_s: list[float] = []

    def ours() -> float:
        d = work / f"ours-{next(runs)}"
        collect_s.append(
            _timed(
                lambda: collect_activations(model, tokenizer, texts, layer=layer, out_dir=d / "store", cfg=cfg), device
            )
        )
        t = collect_s[-1] + _timed(lambda: train_sae(d / "store", cfg, d / "sae", device=device), device)
        shutil.rmtree(d)
        return t

    def peer(name: str) -> Callable[[], float]:
        wrapped, hook, cls, _ = peers[name]

        def run() -> float:
            d = work / f"{name}-{next(runs)}"
            runner_cfg = saelens_runner_config(
                cfg,
                to_sae_lens_config(cfg, d_in, device=str(device)),
                hook_name=hook,
                model_class=cls,
                device=str(device),
                out=d,
                special_ids=sorted(tokenizer.all_special_ids),
                store_prompts=store_prompts,
            )
            t = run_saelens(runner_cfg, wrapped, rows, device)
            shutil.rmtree(d, ignore_errors=True)
            return t

        return run

    times = alternate({"ours": ours} | {n: peer(n) for n, p in peers.items() if len(p) == 4}, sizes.reps, sizes.warmup)
    tok = cfg.n_steps * cfg.batch_size
    share = statistics.median(collect_s[-sizes.reps :]) / statistics.median(times["ours"])
    common = (
        f"layer {layer} mlp.up_proj, topk k={cfg.k}, d_sae={cfg.d_sae(d_in)}, batch {cfg.batch_size}, "
        f"{tok} training tokens ({len(texts)} texts, mean {mean_len:.0f} tokens); LLM batch: ours "
        f"{cfg.collect_batch_size} texts, peer {store_prompts} windows of {cfg.context_length}; ours spends "
        f"{share:.0%} collecting; "
    )
    return _pipeline_rows(peers, times, tok, common)


def _pipeline_rows(peers: dict, times: dict, tok: int, common: str) -> list[PerfRow]:
    rows = []
    for n, p in peers.items():
        if n not in times:
            rows.append(PerfRow(n, p[0], unit="tokens/s", ratio_def="ours/peer", goal=">=2"))
            continue
        rows.append(
            _row(
                n,
                [tok / t for t in times["ours"]],
                [tok / t for t in times[n]],
                unit="tokens/s",
                ratio_def="ours/peer",
                goal=">=2",
                notes=common + p[-1],
            )
        )
    return rows
