"""Continue training a base SAE on another model's activations (issue 18: fine-tuned SAEs, latent drift).

``finetune_sae`` starts from the base SAE's own training weights (``training_state.safetensors``, written by
``saes.train.train_sae(..., keep_training_state=True)``), un-folds the base's activation scaling factor s
(W_enc ← W_enc / s, W_dec ← W_dec · s, b_dec ← b_dec · s: the inverse of SAELens's
``fold_activation_norm_scaling_factor``) and trains with SAELens's ``SAETrainer`` keeping that s — a new
estimate on the other model's activations would rescale every latent and read as drift. Adam starts fresh;
the dead-latent window counts from zero. The result is saved like any SAE (``save_inference_model``).

The same (base SAE, rows, config, seed) gives the same weights, so the base model's own fine-tune is the
reference every aligned model's fine-tune is compared with (``saes.diffing.decoder_drift``): drift then
measures what the model change did, not what more training did.

Example::

    python -c "from saes.finetune import finetune_sae; help(finetune_sae)"
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from bench.core.errors import ConfigError, StoreError
from bench.core.io import read_json
from saes.config import SAEConfig, to_sae_lens_config
from saes.train import TRAINING_RECORD, TRAINING_STATE, _save, fit_sae

log = logging.getLogger(__name__)


def shuffled_batches(x: torch.Tensor, batch_size: int, *, seed: int, device: str = "cpu") -> Iterator[torch.Tensor]:
    """Endless batches of rows of ``x``, reshuffled every epoch with ``numpy.random.default_rng(seed)``."""
    if x.shape[0] < batch_size:
        raise ConfigError(f"{x.shape[0]} rows to fine-tune on, fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        perm = torch.from_numpy(rng.permutation(x.shape[0]))
        for s in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield x[perm[s : s + batch_size]].to(device)


def _base_training_sae(base_dir: Path, cfg: SAEConfig, d_in: int, device: str):
    """The base SAE as a ``TrainingSAE`` in its training coordinates, and its scaling factor s (or None)."""
    from sae_lens.registry import get_sae_training_class

    state_file, record_file = base_dir / TRAINING_STATE, base_dir / TRAINING_RECORD
    if not state_file.is_file() or not record_file.is_file():
        raise StoreError(f"{base_dir} has no {TRAINING_STATE}; train the base SAE with keep_training_state=True")
    record = read_json(record_file)
    if record["config"] != cfg.model_dump(mode="json"):
        raise ConfigError(f"the SAE config differs from the one {base_dir} was trained with; fine-tune with that one")
    sae = get_sae_training_class(cfg.architecture)[0](to_sae_lens_config(cfg, d_in, device=device))
    sae.load_state_dict(load_file(str(state_file), device=device))
    s = record.get("activation_scaling_factor")
    if s is not None:
        with torch.no_grad():
            sae.W_enc.data /= s
            sae.W_dec.data *= s
            sae.b_dec.data *= s
    return sae, s


def finetune_sae(
    base_dir: Path,
    cfg: SAEConfig,
    x_train: torch.Tensor,
    out_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Fine-tune the SAE in ``base_dir`` (trained with ``cfg``) on rows ``x_train`` for ``cfg.training_tokens``
    tokens at ``cfg.lr``; ``cfg`` here is the base config with the fine-tune's lr/tokens/batch (see
    ``BaseSAEConfig.finetune_config``). Saves to ``out_dir`` and returns it."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    base_cfg = SAEConfig.model_validate(read_json(base_dir / TRAINING_RECORD)["config"])
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae, s = _base_training_sae(base_dir, base_cfg, int(x_train.shape[1]), device)
        data = shuffled_batches(x_train, cfg.batch_size, seed=seed, device=device)
        sae, trainer, _ = fit_sae(sae, cfg, data, device, scaling_factor=s)
    record = dict(
        config=cfg.model_dump(mode="json"),
        base_config=base_cfg.model_dump(mode="json"),
        seed=seed,
        device=device,
        base=str(base_dir.resolve()),
        n_steps=trainer.n_training_steps,
        n_training_tokens=trainer.n_training_samples,
        n_rows=int(x_train.shape[0]),
        seconds=round(time.perf_counter() - start, 3),
        activation_scaling_factor=s,
    )
    _save(sae, record, out_dir)
    log.info("fine-tuned %s for %d steps -> %s", base_dir.name, trainer.n_training_steps, out_dir)
    return out_dir


def training_record(sae_dir: Path) -> dict:
    """``training.json`` of a trained or fine-tuned SAE."""
    return json.loads((Path(sae_dir) / TRAINING_RECORD).read_text())


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _sparse_data(rng: np.random.Generator, n: int, dirs: np.ndarray) -> torch.Tensor:
    """n rows, each a sum of 4 of the unit ``dirs`` with exponential magnitudes, plus 1 % noise."""
    idx = np.argsort(rng.random((n, len(dirs))), axis=1)[:, :4]
    coef = np.zeros((n, len(dirs)))
    np.put_along_axis(coef, idx, rng.exponential(1.0, (n, 4)), axis=1)
    return torch.from_numpy((coef @ dirs + 0.01 * rng.standard_normal((n, dirs.shape[1]))).astype(np.float32))


def _drift(ctx, rotate: bool) -> dict[str, float]:
    """Drift metrics (``saes.diffing.drift_metrics``, cos threshold 0.9) between two fine-tunes of one small base
    SAE, and the base SAE's explained-variance drop (``sae_transfer_ev_drop``): on the same rows (the base model
    against itself), or on rows whose first half of dimensions is rotated by a random rotation. Computed once
    per control run (``ctx.cache``)."""
    key = f"sae_drift:{rotate}"
    if key not in ctx.cache:  # None (no latent alive) → NaN, which the control records as a failure
        ctx.cache[key] = {k: float("nan") if v is None else v for k, v in _drift_uncached(ctx, rotate).items()}
    return ctx.cache[key]


def _drift_uncached(ctx, rotate: bool) -> dict[str, float | None]:
    import tempfile

    from saes import metrics as M
    from saes.config import to_sae_lens_config
    from saes.diffing import drift_metrics
    from saes.score import encode_heldout, load_sae

    rng = ctx.rng(81)
    dirs = rng.standard_normal((48, 32))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    x = _sparse_data(rng, 6000, dirs)
    cfg = SAEConfig(expansion=2, k=4, training_tokens=12_800, batch_size=128, dead_feature_window=20)
    ft_cfg = cfg.model_copy(update={"training_tokens": 6400})
    y = x.clone()
    if rotate:
        q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
        y[:, :16] = x[:, :16] @ torch.from_numpy(q.astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        from sae_lens.registry import get_sae_training_class

        with torch.random.fork_rng():
            torch.manual_seed(0)
            sae = get_sae_training_class("topk")[0](to_sae_lens_config(cfg, 32))
            sae, trainer, s = fit_sae(sae, cfg, shuffled_batches(x, 128, seed=0), "cpu")
        _save(
            sae,
            {"config": cfg.model_dump(mode="json"), "activation_scaling_factor": s},
            Path(tmp) / "base",
            training_state=True,
        )
        a = load_sae(finetune_sae(Path(tmp) / "base", ft_cfg, x, Path(tmp) / "a", seed=1))
        b = load_sae(finetune_sae(Path(tmp) / "base", ft_cfg, y, Path(tmp) / "b", seed=1))
        with torch.no_grad():
            alive = (a.encode(x) != 0).any(0)
        base = load_sae(Path(tmp) / "base")
        ev_drop = M.sae_explained_variance(x, encode_heldout(base, x, 1)[0]) - M.sae_explained_variance(
            y, encode_heldout(base, y, 1)[0]
        )
        return drift_metrics(a, b, alive, 0.9)[1] | {"sae_transfer_ev_drop": ev_drop}


def _register_controls() -> None:
    from bench.core.controls import control

    control(
        "sae_drift_frac",
        "negative",
        "a base SAE fine-tuned twice on the same model's rows (the base model against itself)",
        expect="= 0",
        check=lambda v: v == 0.0,
    )(lambda ctx: _drift(ctx, rotate=False)["sae_drift_frac"])
    control(
        "sae_drift_frac",
        "positive",
        "fine-tuned on rows whose first 16 of 32 dimensions are randomly rotated",
        expect="≥ 0.1 (0.16–0.27 over seeds 0–3; the null gives exactly 0)",
        check=lambda v: v >= 0.1,
    )(lambda ctx: _drift(ctx, rotate=True)["sae_drift_frac"])
    for metric, floor, seen in (
        ("sae_drift_decoder", 0.03, "0.081–0.085"),
        ("sae_drift_encoder", 0.1, "0.33–0.36"),
        ("sae_transfer_ev_drop", 0.1, "0.36–0.40"),
    ):
        control(
            metric,
            "negative",
            "a base SAE fine-tuned twice on the same model's rows (the base model against itself)",
            expect="= 0 (to 1e-9)",
            check=lambda v: abs(v) < 1e-9,
        )(lambda ctx, metric=metric: _drift(ctx, rotate=False)[metric])
        control(
            metric,
            "positive",
            "fine-tuned on rows whose first 16 of 32 dimensions are randomly rotated",
            expect=f"≥ {floor} ({seen} over seeds 0–3)",
            check=functools.partial(operator.le, floor),  # floor ≤ v
        )(lambda ctx, metric=metric: _drift(ctx, rotate=True)[metric])


_register_controls()
