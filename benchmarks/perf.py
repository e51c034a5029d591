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
- ``multi_sae``: the suite's SAE workload, many SAEs from one text set: SAEs of every k in ``multi_ks`` at
  every layer in ``multi_layers``, each trained for ``multi_epochs`` epochs of the train split. Throughput =
  Σ SAE training tokens / wall seconds of everything (collection included). Ours: one
  ``saes.activations.collect_sites`` pass for all layers + ``saes.train_many.train_saes`` (all SAEs in one
  SAELens ``MultiSAETrainer`` pass over the cached stores). Peers, each on a ``HookedProxyLM`` around a copy of
  the HF model, same token stream and settings: SAELens's ``MultiSAETrainingRunner`` (one LLM stream
  for all SAEs, re-run every epoch) and one ``LanguageModelSAETrainingRunner`` per SAE. Ratio = ours / the
  faster peer (both speeds in the notes); goal ≥ 2 (``benchmarks/multi_sae.py``).
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
- ``shared_ref_logps``: seconds to train the DPO family's five methods on one (task, seed)'s pairs with the
  reference log-probs shared (``share_ref_logps``) vs computed per step (``benchmarks/ref_share.py``).
  Ratio = peer / ours.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from bench.align import make_trainer
from bench.core.compat import labelled_positions_only, quiet_training
from bench.core.data import read_embedded, seeded_order
from bench.core.lm import n_layers, resolve_layer
from bench.core.task import Pair
from bench.methods import DecPOMethodConfig, DPOMethodConfig
from bench.models import load_model, resolve_device
from bench.proxies import collect_last_token
from benchmarks.multi_sae import bench_multi_sae
from benchmarks.ref_share import bench_shared_ref
from benchmarks.sae import bench_sae_pipeline, hooked_transformer, tl_hook_error, token_rows  # noqa: F401  (the rest re-exported: bench.perf.* is the public surface)
from benchmarks.timing import (  # noqa: F401
    COLUMNS,
    FULL,
    QUICK,
    PerfRow,
    PerfSizes,
    RatioDef,
    _row,
    _sync,
    _timed,
    alternate,
    device_label,
)

log = logging.getLogger(__name__)

ROWS = ("sae_pipeline", "sae_pipeline_hf", "multi_sae", "proxies_one_pass", "decpo_step", "dpo_mfu", "shared_ref_logps")
"""Every row ``run_perf`` writes, in run order (``--only`` takes these names)."""


# ----------------------------------------------------------------------------------------------- inputs


def perf_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` real short texts (SciQ question/answer claims shipped by sae-probes), in a seeded order."""

    rows = read_embedded("perf", "36_sciq_tf")["prompt"].astype(str).tolist()
    if n > len(rows):
        raise ValueError(f"perf asks for {n} texts but 36_sciq_tf has {len(rows)}; lower the sizes")
    return [rows[i] for i in seeded_order(len(rows), seed)[:n]]


def perf_pairs(texts: Sequence[str], n: int):
    """``n`` preference pairs cut from ``texts``: prompt = one text, replies = two texts joined each, every
    text cut to its first 10 words so the pairs fit the benchmark's lengths (training never cuts them)."""

    if len(texts) < 5 * n:
        raise ValueError(f"{n} pairs need {5 * n} texts, got {len(texts)}")
    t = [" ".join(x.split()[:10]) for x in texts]
    return [
        Pair(prompt=t[5 * i], chosen=f"{t[5 * i + 1]} {t[5 * i + 2]}", rejected=f"{t[5 * i + 3]} {t[5 * i + 4]}")
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------- benchmarks


def _optimizer_step(trainer, batch) -> None:
    """What the HF Trainer does per optimiser step: loss + backward, grad clipping, AdamW, scheduler."""
    trainer.training_step(trainer.model, batch)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad()


def bench_decpo_step(
    model, tokenizer, pairs, layer: int, sizes: PerfSizes, device: torch.device, work: Path
) -> tuple[PerfRow, list[float], dict]:
    """``decpo_step`` row, the DPO step times and the batch facts (tokens) for the MFU row.

    Each trainer (own deep copy of ``model``) first runs ``warmup`` real ``train()`` steps, which also
    builds its optimizer and scheduler; then both step alternately on the same collated batch.
    """

    common = dict(
        batch_size=len(pairs),
        max_steps=sizes.warmup,
        max_length=sizes.dpo_max_length,
        max_prompt_length=sizes.dpo_max_prompt,
        warmup=0.0,
        eval_every=10**6,
    )
    cfgs = {"dpo": DPOMethodConfig(**common), "decpo": DecPOMethodConfig(**common)}
    trainers = {}
    with quiet_training(), labelled_positions_only():  # as train_policy runs them
        for name, cfg in cfgs.items():
            trainers[name] = make_trainer(
                name, cfg, copy.deepcopy(model), tokenizer, pairs, work / name, seed=0, layer=layer
            )
            trainers[name].train()
            trainers[name].model.train()
        batch = next(iter(trainers["dpo"].get_train_dataloader()))
        decor = trainers["decpo"]._metrics["train"]["reg/decor"]  # one value appended per DecPO loss
        before = len(decor)
        times = alternate(
            {n: (lambda tr=tr: _timed(lambda: _optimizer_step(tr, batch), device)) for n, tr in trainers.items()},  # type: ignore[misc]  # mypy#15459: lambda with a default arg
            sizes.reps,
            warmup=0,
        )
    trainers["decpo"]._capture.remove()
    if len(decor) - before != sizes.reps:
        raise RuntimeError("the DecPO penalty was not computed on every timed step; the timing would be DPO's")
    mask = batch["attention_mask"]
    facts = {"tokens": int(mask.sum()), "padded": int(mask.numel()), "rows": int(mask.shape[0])}
    c = cfgs["decpo"]
    assert isinstance(c, DecPOMethodConfig)  # built as one just above
    notes = (
        f"{len(pairs)} pairs ({facts['rows']} rows, {facts['tokens']} tokens, {facts['padded']} padded), "
        f"LoRA r={c.lora_r} on {','.join(c.lora_targets)}, DecPO layer {layer} lambda={c.lam} "
        f"normalize={c.normalize}; step = loss+backward+clip+AdamW on one fixed batch"
    )
    row = _row(
        "decpo_step", times["decpo"], times["dpo"], unit="s/step", ratio_def="ours/peer", goal="<=1.10", notes=notes
    )
    return row, times["dpo"], facts


def bench_proxies(model, tokenizer, texts: list[str], sizes: PerfSizes, device: torch.device) -> PerfRow:
    """``proxies_one_pass``: one ``collect_last_token`` over all layers vs one call per layer."""

    layers = list(range(n_layers(model)))
    one = collect_last_token(model, tokenizer, texts, layers)
    single = collect_last_token(model, tokenizer, texts, [layers[-1]])[layers[-1]]
    if not torch.allclose(one[layers[-1]], single, rtol=1e-4, atol=1e-4):
        raise RuntimeError("one-pass and per-layer collection disagree on the last layer")
    times = alternate(
        {
            "one": lambda: _timed(lambda: collect_last_token(model, tokenizer, texts, layers), device),
            "loop": lambda: _timed(lambda: [collect_last_token(model, tokenizer, texts, [l]) for l in layers], device),
        },
        sizes.reps,
        warmup=0,
    )
    return _row(
        "proxies_one_pass",
        times["one"],
        times["loop"],
        unit="s",
        ratio_def="peer/ours",
        goal="",
        notes=f"{len(layers)} layers, {len(texts)} texts (chat-formatted), mlp.up_proj last token; "
        "peer = one collect_last_token call per layer",
    )


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
    return _row(
        "dpo_mfu",
        [flops / t for t in dpo_times],
        peak,
        unit="FLOP/s",
        ratio_def="ours/peer",
        goal="",
        notes=f"DPO step FLOPs = 6*N*T = 6*{n_params}*{facts['tokens']} = {flops:.3g} (LoRA); "
        f"peak = {n}x{n} {str(dtype).removeprefix('torch.')} matmul",
    )


# ----------------------------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[PerfRow], path: Path, *, keep_others: bool = False) -> Path:
    """Write ``rows`` to ``path`` (temp file + rename), columns ``COLUMNS``; ``keep_others`` keeps the rows
    of ``path`` whose benchmark is not among ``rows`` (a partial ``--only`` run updates its rows only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {r.benchmark for r in rows}
    kept = []
    if keep_others and path.is_file():
        with path.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["benchmark"] not in mine]
    fd, tmp = tempfile.mkstemp(prefix=".perf.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(kept)
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
        table.append(
            (
                r.benchmark,
                cell(r.ours, r.ours_min, r.ours_max),
                cell(r.peer, r.peer_min, r.peer_max),
                r.unit,
                f"{r.ratio:.3g} ({r.ratio_def})",
                r.goal or "-",
                "-" if r.met is None else ("yes" if r.met else "NO"),
            )
        )
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
    n_ref = sizes.ref_steps * sizes.ref_batch

    def decpo() -> list[PerfRow]:
        row, dpo["times"], dpo["facts"] = bench_decpo_step(
            model, tok, perf_pairs(texts, sizes.dpo_pairs), layer, sizes, dev, work
        )
        return [row]

    def mfu() -> list[PerfRow]:
        if not dpo:
            raise RuntimeError("it needs the DPO step times of decpo_step, which did not run")
        return [bench_mfu(model, dpo["times"], dpo["facts"], sizes, dev)]

    return [
        (
            ("sae_pipeline", "sae_pipeline_hf"),
            lambda: bench_sae_pipeline(model, tok, texts[: sizes.sae_texts], layer, sizes, dev, work),
        ),
        (("multi_sae",), lambda: [bench_multi_sae(model, tok, texts[: sizes.sae_texts], sizes, dev, work)]),
        (("proxies_one_pass",), lambda: [bench_proxies(model, tok, texts[: sizes.proxy_texts], sizes, dev)]),
        (("decpo_step",), decpo),
        (("dpo_mfu",), mfu),
        (
            ("shared_ref_logps",),
            lambda: [bench_shared_ref(model, tok, perf_pairs(texts, n_ref + 2), layer, sizes, dev, work)],
        ),
    ]


def run_perf(
    out: Path,
    quick: bool,
    device: str = "auto",
    *,
    model_spec: str = "embedded:smollm2-135m-instruct",
    sizes: PerfSizes | None = None,
    echo: bool = True,
    only: Sequence[str] = (),
) -> list[PerfRow]:
    """Run every benchmark on ``model_spec`` (or those with a row in ``only``), write ``<out>/perf.csv``
    (with ``only``, the other rows already there are kept), print the table; return the rows."""

    sizes = sizes or (QUICK if quick else FULL)
    dev = resolve_device(device)
    model, tok = load_model(model_spec, device=str(dev))
    layer = resolve_layer(sizes.layer, n_layers(model))
    n_pairs = max(sizes.dpo_pairs, sizes.ref_steps * sizes.ref_batch + 2)
    texts = perf_texts(max(sizes.sae_texts, 5 * n_pairs, sizes.proxy_texts))
    label, out, rows, t0 = device_label(dev), Path(out), [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".perf-", dir=out) as tmp:
        for names, fn in _benchmarks(model, tok, texts, layer, sizes, dev, Path(tmp)):
            if only and not set(names) & set(only):
                continue
            load = f"load1={os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
            log.info("perf: %s (%s)", "/".join(names), load)
            for r in _guard(names, fn):
                rows.append(
                    PerfRow(**(asdict(r) | {"device": label, "notes": "; ".join(x for x in (r.notes, load) if x)}))
                )
    path = write_csv(rows, out / "perf.csv", keep_others=bool(only))
    if echo:
        print(
            f"perf on {model_spec}, {label}, {'quick' if quick else 'full'} sizes, "
            f"{time.perf_counter() - t0:.0f}s → {path}"
        )
        print(format_table(rows))
    return rows
