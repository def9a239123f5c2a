"""Config files: every preset survives YAML, files are checked key by key, and they overlay a base config."""

import pytest

from training.config import PRESETS, TrainConfig, apply_overrides, preset
from training.config_file import ConfigFileError, load_config, save_config, to_yaml


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml_with_its_tuples(name, tmp_path):
    path = save_config(preset(name), tmp_path / "run.yaml")
    back = load_config(path)  # over the paper's defaults: the file alone must rebuild the preset
    assert back == preset(name)
    assert isinstance(back.augment.view2.crop_scale, tuple) and isinstance(back.encoder.mean, tuple)
    assert to_yaml(back) == path.read_text()


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_partial_file_overlays_its_base(tmp_path):
    path = _write(tmp_path, "train:\n  steps: 50\naugment:\n  view2:\n    crop_scale: [0.5, 1]\n")
    got = load_config(path, base=preset("fmnist-demo"))
    assert got == apply_overrides(preset("fmnist-demo"), ["train.steps=50", "augment.view2.crop_scale=(0.5, 1.0)"])


def test_an_empty_file_is_the_base(tmp_path):
    assert load_config(_write(tmp_path, ""), base=preset("cifar10")) == preset("cifar10")


@pytest.mark.parametrize(("text", "key"), [
    ("optim:\n  lr_bsae: 0.3\n", "optim.lr_bsae"),
    ("augment:\n  view1:\n    blur: 0.3\n", "augment.view1.blur"),
    ("trainer:\n  steps: 3\n", "trainer"),
])
def test_an_unknown_key_is_an_error_naming_it_and_the_file(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigFileError, match=f"unknown config key '{key}'") as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("text", "key"), [
    ("train:\n  batch_size: big\n", "train.batch_size"),
    ("train:\n  batch_size: 12.5\n", "train.batch_size"),
    ("train:\n  progress: 3\n", "train.progress"),
    ("optim:\n  lr_base: fast\n", "optim.lr_base"),
    ("encoder:\n  mean: [0.1, 0.2]\n", "encoder.mean"),
    ("encoder:\n  arch: null\n", "encoder.arch"),
    ("optim: 0.3\n", "optim"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigFileError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_values_are_read_as_the_types_the_config_declares(tmp_path):
    path = _write(tmp_path, "optim:\n  weight_decay: 1e-6\n  lr_base: 3\ntrain:\n  steps: null\n  max_minutes: 2\n")
    cfg = load_config(path)
    assert cfg.optim.weight_decay == 1e-6 and isinstance(cfg.optim.lr_base, float)  # YAML 1.1 reads 1e-6 as text
    assert cfg.train.steps is None and cfg.train.max_minutes == 2.0


def test_the_configs_own_checks_still_apply(tmp_path):
    with pytest.raises(ConfigFileError, match="flip_p"):
        load_config(_write(tmp_path, "augment:\n  view1:\n    flip_p: 2.0\n"))


def test_broken_yaml_and_missing_files_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigFileError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(_write(tmp_path, "train:\n  steps: [1, 2\n"))
    with pytest.raises(ConfigFileError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigFileError, match="must be a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_defaults_round_trip_too(tmp_path):
    assert load_config(save_config(TrainConfig(), tmp_path / "d.yaml"), base=preset("fmnist-demo")) == TrainConfig()
