"""Train one SAE with SAELens's ``SAETrainer`` on the train split of an activation store.

The trainer is fed by ``ActivationStore.train_batches`` (an endless seeded iterator of activation
batches), wandb is off, and nothing is checkpointed by SAELens; the final SAE is written with
``save_inference_model`` so ``sae_lens.SAE.load_from_disk(path)`` opens it (batchtopk and
matryoshka_batchtopk load as jumprelu, as SAELens saves them). ``training.json`` next to it records
the config, seed, store, step count, wall time and SAELens's end-of-training L0 / dead count.

The same (config, seed, store) gives the same weights on CPU: the SAE is initialised and trained
under a forked, seeded torch RNG and the batch order comes from ``numpy.random.default_rng(seed)``.

Example::

    python -c "from saes.train import train_sae; from saes.config import SAEConfig; \
print(train_sae('/tmp/st', SAEConfig(training_tokens=4096, batch_size=256), '/tmp/sae', seed=0))"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from saes.config import SAEConfig, to_sae_lens_config
from saes.store import ActivationStore

log = logging.getLogger(__name__)

TRAINING_RECORD = "training.json"
TRAINING_STATE = "training_state.safetensors"


def _sae_metadata(store: ActivationStore) -> dict:
    req = store.manifest["request"]
    return dict(
        model_name=req["model"],
        hook_name=req["hook_name"],
        hook_layer=req["layer"],
        context_size=req["max_length"],
        prepend_bos=False,
        dataset_path=str(Path(store.path).resolve()),
        exclude_special_tokens=req["drop_special_tokens"],
    )


def _trainer_config(cfg: SAEConfig, device: str):
    """SAELens's ``SAETrainerConfig``: constant lr (``lr_end`` = lr: SAELens asserts it without setting it),
    wandb off (SAELens then runs no evaluator; monobench scores afterwards), no checkpoints."""
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=cfg.n_steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        device=device,
        autocast=False,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(cfg.n_steps + 1, 2),
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
    )


def fit_sae(sae, cfg: SAEConfig, data, device: str, *, scaling_factor: float | None = None):
    """Run SAELens's ``SAETrainer`` on ``sae`` (a ``TrainingSAE``) over the batch iterator ``data``.

    The activation scaling factor s (inputs × s during training; SAELens ``expected_average_only_in``:
    s = √d_in / mean ‖x‖) is estimated here from the first batches, as SAELens's ``fit`` would, unless
    ``scaling_factor`` is given (a fine-tune keeps its base SAE's s). Returns (trained SAE with s folded into
    its weights, trainer, s or None)."""
    from sae_lens import SAETrainer

    trainer = SAETrainer(cfg=_trainer_config(cfg, device), sae=sae, data_provider=data)
    if sae.cfg.normalize_activations == "expected_average_only_in":
        if scaling_factor is None:
            trainer.activation_scaler.estimate_scaling_factor(
                d_in=sae.cfg.d_in, data_provider=data, n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate
            )
        else:
            trainer.activation_scaler.scaling_factor = scaling_factor
    s = trainer.activation_scaler.scaling_factor
    return trainer.fit(), trainer, s


def train_sae(
    store_dir: Path,
    cfg: SAEConfig,
    out_dir: Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    keep_training_state: bool = False,
) -> Path:
    """Train ``cfg.architecture`` on ``store_dir``'s train tokens; save it to ``out_dir`` and return that path.

    With ``keep_training_state`` the trained ``TrainingSAE``'s own weights (s folded in, before SAELens's
    inference-time folding) are saved too, as ``training_state.safetensors``, so ``saes.finetune`` can
    continue training it exactly."""
    from sae_lens.registry import get_sae_training_class

    store = ActivationStore(Path(store_dir))
    device = str(torch.device(device))
    sl_cfg = to_sae_lens_config(cfg, store.d_in, device=device, metadata=_sae_metadata(store))
    start = time.perf_counter()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        sae = get_sae_training_class(cfg.architecture)[0](sl_cfg)
        data = store.train_batches(cfg.batch_size, seed=seed, device=device)
        sae, trainer, scale = fit_sae(sae, cfg, data, device)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    record = training_record(cfg, seed, device, store, out_dir, trainer, sae, scale, seconds)
    _save(sae, record, out_dir, training_state=keep_training_state)
    log.info("trained %s SAE (%d steps, %.1fs) -> %s", cfg.architecture, trainer.n_training_steps, seconds, out_dir)
    return out_dir


def training_record(
    cfg: SAEConfig, seed: int, device: str, store: ActivationStore, out_dir: Path, trainer, sae, scale, seconds: float
) -> dict:
    """``training.json``: config, seed, store (relative path and request), steps, tokens, epochs, wall seconds,
    SAELens's end-of-training L0 and dead count, the activation scaling factor and the SAELens version."""
    return dict(
        config=cfg.model_dump(mode="json"),
        seed=seed,
        device=device,
        store=os.path.relpath(Path(store.path).resolve(), out_dir.resolve()),
        store_request=store.manifest["request"],
        n_steps=trainer.n_training_steps,
        n_training_tokens=trainer.n_training_samples,
        n_train_tokens_available=store.n_train,
        epochs=trainer.n_training_samples / store.n_train,
        seconds=round(seconds, 3),
        final_l0=sae.cfg.metadata.l0,
        final_dead=sae.cfg.metadata.num_dead_features,
        activation_scaling_factor=scale,
        sae_lens_version=_sae_lens_version(),
    )


def _save(sae, record: dict, out_dir: Path, *, training_state: bool = False) -> None:
    """``save_inference_model`` + ``training.json`` (+ the ``TrainingSAE`` weights with ``training_state``) into
    a temp folder renamed to ``out_dir`` when complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        if training_state:  # before save_inference_model, which may fold decoder norms into a copy only
            save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, tmp / TRAINING_STATE)
        sae.save_inference_model(tmp)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sae_lens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")
