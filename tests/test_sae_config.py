"""The [sae] table: strict validation and the mapping onto SAELens's training configs."""

import typing

import pytest
from pydantic import ValidationError

from saes.config import Architecture, SAEConfig, to_sae_lens_config

ARCHS = typing.get_args(Architecture)


def test_every_architecture_is_registered_in_sae_lens():
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    assert set(ARCHS) <= set(SAE_TRAINING_CLASS_REGISTRY)


@pytest.mark.parametrize("arch", ARCHS)
def test_maps_to_sae_lens_config(arch):
    cfg = SAEConfig(architecture=arch, expansion=2)
    sl = to_sae_lens_config(cfg, 64, metadata={"hook_name": "model.layers.1.mlp.up_proj"})
    assert sl.architecture() == arch
    assert (sl.d_in, sl.d_sae) == (64, 128)
    assert sl.metadata.hook_name == "model.layers.1.mlp.up_proj"
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        assert sl.k == 32
    if arch == "matryoshka_batchtopk":
        assert sl.matryoshka_widths == [16, 32, 64, 128]


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="expanson"):
        SAEConfig.model_validate({"expanson": 8})
    with pytest.raises(ValidationError, match="ms_topn"):
        SAEConfig.model_validate({"eval": {"ms_topn": 3}})


def test_field_of_another_architecture_is_rejected():
    with pytest.raises(ValidationError, match="l1_coefficient is used only by standard"):
        SAEConfig(architecture="topk", l1_coefficient=3.0)
    SAEConfig(architecture="standard", l1_coefficient=3.0)


def test_sae_lens_overrides_are_checked_against_the_dataclass():
    cfg = SAEConfig(architecture="jumprelu", sae_lens_overrides={"jumprelu_sparsity_loss_mode": "tanh"})
    assert to_sae_lens_config(cfg, 32).jumprelu_sparsity_loss_mode == "tanh"
    with pytest.raises(ValueError, match="not fields of JumpReLUTrainingSAEConfig"):
        to_sae_lens_config(SAEConfig(architecture="jumprelu", sae_lens_overrides={"typo_field": 1}), 32)
    with pytest.raises(ValidationError, match="monobench sets itself"):
        SAEConfig(sae_lens_overrides={"d_sae": 10})
    with pytest.raises(ValidationError, match="monobench sets itself"):  # the trainer and train_many read our field
        SAEConfig(sae_lens_overrides={"normalize_activations": "none"})


def test_cross_field_checks():
    with pytest.raises(ValidationError, match="no training step"):
        SAEConfig(training_tokens=100, batch_size=1024)
    with pytest.raises(ValidationError, match="matryoshka_fracs"):
        SAEConfig(architecture="matryoshka_batchtopk", matryoshka_fracs=(0.5, 0.25, 1.0))
    with pytest.raises(ValueError, match="smaller than d_sae"):
        to_sae_lens_config(SAEConfig(k=300, expansion=2), 64)
    with pytest.raises(ValidationError, match="heldout_frac"):
        SAEConfig(heldout_frac=1.0)
    with pytest.raises(ValidationError, match="probe_max_length = 0 is too small"):
        SAEConfig.model_validate({"eval": {"probe_max_length": 0}})
    with pytest.raises(ValidationError, match="probe_split"):
        SAEConfig.model_validate({"eval": {"probe_split": "random"}})


def test_config_is_frozen_and_round_trips():
    cfg = SAEConfig(architecture="batchtopk", k=16)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.k = 3
    assert SAEConfig.model_validate(cfg.model_dump(mode="json")) == cfg
