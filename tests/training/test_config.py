import pytest

from training.config import PRESETS, TrainConfig, apply_overrides, preset


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.optim.lr_base, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.trust) == (0.2, 1.5e-6, 0.9, 1e-3)
    assert cfg.ema.tau_base == 0.996
    assert (cfg.heads.projector_hidden, cfg.heads.out_dim) == (4096, 256)
    assert (cfg.augment.view1.blur_p, cfg.augment.view2.blur_p, cfg.augment.view2.solarize_p) == (1.0, 0.1, 0.2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_dict_from_dict_round_trips(name):
    cfg = PRESETS[name]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_set_nested_values_with_their_types():
    cfg = apply_overrides(TrainConfig(), ["optim.lr_base=3", "augment.view2.blur_p=0.5",
                                          "train.max_minutes=2.5", "data.source=/some/dir"])
    assert cfg.optim.lr_base == 3.0 and isinstance(cfg.optim.lr_base, float)
    assert cfg.augment.view2.blur_p == 0.5 and cfg.augment.view1 == TrainConfig().augment.view1
    assert cfg.train.max_minutes == 2.5 and cfg.data.source == "/some/dir"


def test_none_clears_an_optional_value():
    assert preset("fmnist-demo").train.max_minutes is not None
    assert apply_overrides(preset("fmnist-demo"), ["train.max_minutes=none"]).train.max_minutes is None


def test_unknown_override_key_is_named():
    with pytest.raises(ValueError, match="optim.lr_bsae"):
        apply_overrides(TrainConfig(), ["optim.lr_bsae=0.3"])


def test_bad_override_value_is_rejected():
    with pytest.raises(ValueError, match="train.batch_size"):
        apply_overrides(TrainConfig(), ["train.batch_size=big"])


def test_presets_are_copies():
    preset("fmnist-demo").optim.lr_base = 99.0
    assert preset("fmnist-demo").optim.lr_base != 99.0
