"""The ``multi_sae`` row of ``python -m bench perf``: many SAEs (layers × k) trained for several epochs of one
text set — the suite's real SAE workload — ours against SAELens's two ways of doing the same work.

Ours: ``saes.activations.collect_sites`` (one forward per batch for every layer, stopped after the last)
then ``saes.train_many.train_saes`` (every SAE in one ``MultiSAETrainer`` pass over the cached stores).
Peers, on the same HF model (``HookedProxyLM`` around a copy), token stream, SAE settings and budget:
SAELens's ``MultiSAETrainingRunner`` (one LLM stream feeds every SAE, but it re-runs the LLM for every
epoch) and one ``LanguageModelSAETrainingRunner`` per SAE, run one after another. Throughput = Σ SAE
training tokens / wall seconds; ratio = ours / the faster peer.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.lm import hook_module, n_layers, resolve_layer
from benchmarks.sae import _sae_config, run_saelens, runner_training_kwargs, saelens_runner_config, token_rows
from benchmarks.timing import PerfRow, PerfSizes, _row, _timed, alternate
from saes.activations import ActivationStore, collect_activations, collect_sites, module_path, tokenize_docs
from saes.config import SAEConfig, to_sae_lens_config
from saes.train_many import SAEJob, train_saes


def multi_layers(model, sizes: PerfSizes) -> list[int]:
    """The distinct layers at ``sizes.multi_layers`` (indices or depth fractions), in order."""
    return sorted({resolve_layer(x, n_layers(model)) for x in sizes.multi_layers})


def _budget(model, tokenizer, texts: list[str], layer: int, sizes: PerfSizes, work: Path) -> tuple[int, int]:
    """(training tokens = ``multi_epochs`` × the train split, floored to whole batches; d_in)."""
    probe = ActivationStore(
        collect_activations(model, tokenizer, texts, layer=layer, out_dir=work / "probe", cfg=_sae_config(sizes, None))
    )
    n_train, d_in = probe.n_train, probe.d_in
    shutil.rmtree(work / "probe")
    tokens = sizes.multi_epochs * n_train // sizes.sae_batch * sizes.sae_batch
    if tokens < sizes.sae_batch:
        raise ValueError(f"{n_train} train tokens × {sizes.multi_epochs} epochs is less than one SAE batch")
    return tokens, d_in


def _multi_runner_config(cfgs: dict[str, SAEConfig], hooks: dict[str, str], d_in: int, device: str, **kw):
    """SAELens ``MultiSAETrainingRunnerConfig`` with ``saelens_runner_config``'s settings for every SAE."""
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

    c = next(iter(cfgs.values()))
    return MultiSAETrainingRunnerConfig(
        saes={n: to_sae_lens_config(cfg, d_in, device=device) for n, cfg in cfgs.items()},
        hook_names=hooks,
        model_name="monobench-perf",
        model_class_name="AutoModelForCausalLM",
        dataset_path="",
        streaming=False,
        **runner_training_kwargs(c, device),
        **kw,
    )


@dataclass(frozen=True)
class _Workload:
    """The SAEs ({name: (layer, config)}), their hook module paths, input width, SAELens token rows and LLM batch."""

    cfgs: dict[str, tuple[int, SAEConfig]]
    hooks: dict[int, str]
    d_in: int
    rows: list[list[int]]
    prompts: int
    special_ids: list[int]
    device: torch.device


def bench_multi_sae(model, tokenizer, texts: list[str], sizes: PerfSizes, device: torch.device, work: Path) -> PerfRow:
    """The ``multi_sae`` row (see the module docstring)."""
    from sae_lens.load_model import HookedProxyLM

    layers = multi_layers(model, sizes)
    tokens, d_in = _budget(model, tokenizer, texts, layers[-1], sizes, work)
    base = _sae_config(sizes, tokens)
    docs = tokenize_docs(tokenizer, texts, max_length=base.context_length, use_chat_template=False)
    mean_len = sum(len(ids) for ids, _ in docs) / len(docs)
    w = _Workload(
        cfgs={f"L{la}-k{k}": (la, base.model_copy(update={"k": k})) for la in layers for k in sizes.multi_ks},
        hooks={la: module_path(model, hook_module(model, la)) for la in layers},
        d_in=d_in,
        rows=token_rows([ids for ids, _ in docs], base.context_length),
        prompts=max(1, round(base.collect_batch_size * mean_len / base.context_length)),
        special_ids=sorted(tokenizer.all_special_ids),
        device=device,
    )
    each = {la: HookedProxyLM(copy.deepcopy(model), tokenizer, hook_names=[h]) for la, h in w.hooks.items()}
    shared = HookedProxyLM(copy.deepcopy(model), tokenizer, hook_names=list(w.hooks.values()))
    runs, collect_s = itertools.count(), list[float]()
    sides: dict[str, Callable[[], float]] = {
        "ours": lambda: _ours(model, tokenizer, texts, w, work / f"ours-{next(runs)}", collect_s),
        "multi": lambda: _saelens_multi(shared, w, work / f"multi-{next(runs)}"),
        "each": lambda: _saelens_each(each, w, work / f"each-{next(runs)}"),
    }
    times = alternate(sides, sizes.reps, sizes.warmup)
    share = statistics.median(collect_s[-sizes.reps :]) / statistics.median(times["ours"])
    facts = f"ours spends {share:.0%} collecting; {len(texts)} texts (mean {mean_len:.0f} tokens); "
    facts += f"LLM batch: ours {base.collect_batch_size} texts, "
    return _multi_row(times, w.cfgs, tokens, sizes, facts + f"peer {w.prompts} windows")


def _ours(model, tokenizer, texts: list[str], w: _Workload, out: Path, collect_s: list[float]) -> float:
    """Seconds for one ``collect_sites`` pass over every layer + ``train_saes`` of every SAE (the collection's
    seconds are appended to ``collect_s``)."""
    layers = list(w.hooks)
    dirs = [out / f"store-{la}" for la in layers]
    cfg = next(iter(w.cfgs.values()))[1]
    sites = [(la, "mlp.up_proj") for la in layers]
    collect_s.append(
        _timed(lambda: collect_sites(model, tokenizer, texts, sites=sites, out_dirs=dirs, cfg=cfg), w.device)
    )
    jobs = [SAEJob(out / f"store-{la}", c, out / name) for name, (la, c) in w.cfgs.items()]
    t = collect_s[-1] + _timed(lambda: train_saes(jobs, device=w.device), w.device)
    shutil.rmtree(out)
    return t


def _saelens_multi(model, w: _Workload, out: Path) -> float:
    """Seconds for SAELens's ``MultiSAETrainingRunner`` training every SAE from one LLM stream."""
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

    rcfg = _multi_runner_config(
        {n: c for n, (_, c) in w.cfgs.items()},
        {n: w.hooks[la] for n, (la, _) in w.cfgs.items()},
        w.d_in,
        str(w.device),
        store_batch_size_prompts=w.prompts,
        exclude_special_tokens=w.special_ids,
        output_path=str(out),
    )
    t = run_saelens(rcfg, model, w.rows, w.device, runner=MultiSAETrainingRunner)
    shutil.rmtree(out, ignore_errors=True)
    return t


def _saelens_each(models: dict[int, object], w: _Workload, out: Path) -> float:
    """Seconds for one SAELens ``LanguageModelSAETrainingRunner`` per SAE, one after another."""
    total = 0.0
    for name, (layer, cfg) in w.cfgs.items():
        rcfg = saelens_runner_config(
            cfg,
            to_sae_lens_config(cfg, w.d_in, device=str(w.device)),
            hook_name=w.hooks[layer],
            model_class="AutoModelForCausalLM",
            device=str(w.device),
            out=out / name,
            special_ids=w.special_ids,
            store_prompts=w.prompts,
        )
        total += run_saelens(rcfg, models[layer], w.rows, w.device)
    shutil.rmtree(out, ignore_errors=True)
    return total


def _multi_row(times: dict, cfgs: dict, tokens: int, sizes: PerfSizes, facts: str) -> PerfRow:
    """One row: Σ training tokens / s of ours vs the faster SAELens way (both peers' speeds in the notes)."""
    total = tokens * len(cfgs)
    speed = {n: [total / t for t in ts] for n, ts in times.items()}
    med = {n: statistics.median(v) for n, v in speed.items()}
    best = max(("multi", "each"), key=med.__getitem__)
    layers = sorted({la for la, _ in cfgs.values()})
    label = {"multi": "MultiSAETrainingRunner", "each": "one LanguageModelSAETrainingRunner per SAE"}
    return _row(
        "multi_sae",
        speed["ours"],
        speed[best],
        unit="tokens/s",
        ratio_def="ours/peer",
        goal=">=2",
        notes=f"{len(cfgs)} SAEs = layers {layers} mlp.up_proj × topk k {list(sizes.multi_ks)} (d_sae "
        f"{sizes.sae_expansion}×d_in, batch {sizes.sae_batch}), {tokens} training tokens each "
        f"({sizes.multi_epochs} epochs of the train split); {facts}; peer = SAELens {label[best]} "
        f"(MultiSAETrainingRunner {med['multi']:.0f} tokens/s, one runner per SAE {med['each']:.0f} tokens/s), "
        "HF model in HookedProxyLM",
    )
