"""Train many SAEs from stores that share one row layout, in lockstep, with SAELens's ``MultiSAETrainer``.

The suite's expensive part is not one SAE but many (layers × architectures × widths × k) over few
collection passes. ``saes.activations.collect_sites`` writes one store per (layer, hook) from one forward
pass, and every such store has the same rows in the same order. ``train_saes`` then trains every
``SAEJob`` whose trainer settings and seed agree in ONE ``MultiSAETrainer`` run: each step draws one
seeded row-index batch (``saes.store.train_order``), reads those rows from each store once, and hands
every SAE its store's batch (``SAETrainer.step``). Jobs that cannot share (other batch size, lr, step
count, dead-feature window, normalisation, seed, or a store with another layout) form their own group.

Each SAE is bit-for-bit the one ``saes.train.train_sae`` makes for its (store, config, seed): it is
initialised under a forked torch RNG seeded with ``seed``, its batches are the same rows in the same
order, the scaling factor is estimated from the same first batches, and it is saved the same way
(``training.json`` says ``trained_with`` and how many SAEs shared the pass; ``seconds`` is the pass's wall
time, shared). ``tests/test_train_many.py`` checks the equality.

Example::

    python -c "from saes.train_many import SAEJob, train_saes; from saes.config import SAEConfig as C; \
print(train_saes([SAEJob('/tmp/st', C(k=k, training_tokens=4096, batch_size=256), f'/tmp/sae{k}') for k in (8, 16)]))"
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from saes.config import SAEConfig, to_sae_lens_config
from saes.store import ActivationStore, train_order
from saes.train import _sae_metadata, _save, _trainer_config, training_record

log = logging.getLogger(__name__)

LAYOUT_FIELDS = ("model", "max_length", "heldout_frac", "seed", "use_chat_template", "drop_special_tokens")
"""Request fields that fix a store's rows (with the store version, n_texts, texts_sha256 and the train-token
count); layer, hook and dtype do not."""


@dataclass(frozen=True)
class SAEJob:
    """One SAE to train: ``cfg`` on the train split of the store at ``store``, saved to ``out_dir``."""

    store: Path
    cfg: SAEConfig
    out_dir: Path
    seed: int = 0
    keep_training_state: bool = False


def trainer_key(job: SAEJob, store: ActivationStore) -> tuple:
    """Jobs with equal keys can train in one pass: same batch stream (layout, batch size, seed) and one
    ``SAETrainerConfig`` (steps, lr and schedule, dead-feature window, norm-estimate batches, normalisation)."""
    req, c = store.manifest["request"], job.cfg
    layout = (store.manifest["version"], *(req[f] for f in LAYOUT_FIELDS), req["n_texts"], req["texts_sha256"])
    layout += (store.n_train,)
    steps = (c.n_steps, c.batch_size, c.lr, c.lr_warm_up_steps, c.lr_decay_steps, c.dead_feature_window)
    return (layout, steps, c.n_batches_for_norm_estimate, c.normalize_activations, job.seed)


def train_saes(jobs: Sequence[SAEJob], *, device: str | torch.device = "cpu") -> list[Path]:
    """Train every job (grouped by ``trainer_key``, one ``MultiSAETrainer`` pass per group); return the
    SAE folders in job order. Out folders must be distinct."""
    if len({Path(j.out_dir).resolve() for j in jobs}) != len(jobs):
        raise ValueError("two SAE jobs write to one folder; give each SAE its own out_dir")
    stores = {Path(j.store).resolve(): ActivationStore(Path(j.store)) for j in jobs}
    for j in jobs:  # every config checked against its store before anything trains
        to_sae_lens_config(j.cfg, stores[Path(j.store).resolve()].d_in)
    groups: dict[tuple, list[SAEJob]] = {}
    for j in jobs:
        groups.setdefault(trainer_key(j, stores[Path(j.store).resolve()]), []).append(j)
    for group in groups.values():
        _train_group(group, stores, str(torch.device(device)))
    return [Path(j.out_dir) for j in jobs]


def _multi_batches(
    stores: dict[str, ActivationStore], batch_size: int, seed: int, device: str
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless {store key: batch}: one ``train_order`` index batch read from every store (same rows)."""
    readers = {k: s.train_reader(batch_size) for k, s in stores.items()}
    n = next(iter(stores.values())).n_train
    for idx in train_order(n, batch_size, seed):
        yield {k: read(idx).to(device) for k, read in readers.items()}


def _train_group(group: list[SAEJob], stores: dict[Path, ActivationStore], device: str) -> None:
    """Initialise each SAE under its own seeded RNG fork, train them all in one ``MultiSAETrainer``, save each."""
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    first = group[0]
    paths = list(dict.fromkeys(Path(j.store).resolve() for j in group))
    keys = {p: str(i) for i, p in enumerate(paths)}
    used = {k: stores[p] for p, k in keys.items()}
    names = [f"sae{i}" for i in range(len(group))]
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    start = time.perf_counter()
    saes = {}
    for name, j in zip(names, group):
        store = stores[Path(j.store).resolve()]
        sl_cfg = to_sae_lens_config(j.cfg, store.d_in, device=device, metadata=_sae_metadata(store))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(j.seed)
            saes[name] = get_sae_training_class(j.cfg.architecture)[0](sl_cfg)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(first.seed)
        trainer = MultiSAETrainer(
            cfg=_trainer_config(first.cfg, device),
            saes=saes,
            hook_names={n: keys[Path(j.store).resolve()] for n, j in zip(names, group)},
            data_provider=_multi_batches(used, first.cfg.batch_size, first.seed, device),
        )
        factors = _estimate_scales(trainer, first.cfg)
        trained = trainer.fit()
    seconds = time.perf_counter() - start
    for name, j in zip(names, group):
        record = training_record(
            j.cfg,
            j.seed,
            device,
            stores[Path(j.store).resolve()],
            Path(j.out_dir),
            trainer.trainers[name],
            trained[name],
            factors[name],
            seconds,
        ) | {"trained_with": "sae_lens MultiSAETrainer (saes.train_many)", "n_saes_in_pass": len(group)}
        _save(trained[name], record, Path(j.out_dir), training_state=j.keep_training_state)
    log.info("trained %d SAEs in one pass (%d steps, %.1fs)", len(group), trainer.n_training_steps, seconds)


def _estimate_scales(trainer, cfg: SAEConfig) -> dict[str, float | None]:
    """Estimate every SAE's activation scaling factor s = √d_in / mean ‖x‖ from the first
    ``n_batches_for_norm_estimate`` batches, as ``MultiSAETrainer.fit`` would (and as ``train_sae`` does for one
    SAE), but before ``fit`` so s can be recorded (``fit`` folds it into the weights and skips estimating
    factors already set). Returns {SAE name: s, or None without normalisation}."""
    if cfg.normalize_activations != "expected_average_only_in":
        return dict.fromkeys(trainer.trainers)
    n = cfg.n_batches_for_norm_estimate
    cached = [next(trainer.data_provider) for _ in range(n)]
    for name, t in trainer.trainers.items():
        hook = trainer.hook_names[name]
        t.activation_scaler.estimate_scaling_factor(
            d_in=trainer.saes[name].cfg.d_in,
            data_provider=iter([b[hook] for b in cached]),
            n_batches_for_norm_estimate=n,
        )
    return {name: t.activation_scaler.scaling_factor for name, t in trainer.trainers.items()}
