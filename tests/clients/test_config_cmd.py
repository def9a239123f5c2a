"""``byol config show`` and ``byol train --config``: one resolution order, preset → file → --set."""

import yaml

from clients.cli import main as byol
from clients.commands.train import choose_config, parser
from training.config import apply_overrides, preset
from training.config_file import load_config


def test_show_prints_a_preset_as_yaml_that_reads_back(capsys, tmp_path):
    assert byol(["config", "show", "--preset", "cifar10"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["encoder"]["arch"] == "resnet18"
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == preset("cifar10")


def test_show_resolves_a_file_and_overrides_over_the_preset(capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 70\n  knn_every: 7\n")
    assert byol(["config", "show", "--preset", "fmnist-demo", "--config", str(tmp_path / "run.yaml"),
                 "--set", "train.steps=90"]) == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert (got["train"]["steps"], got["train"]["knn_every"], got["optim"]["lr_base"]) == (90, 7, 2.0)


def test_train_applies_preset_then_file_then_set(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 70\n  batch_size: 64\noptim:\n  lr_base: 0.5\n")
    args = parser().parse_args(["--out", str(tmp_path / "r"), "--preset", "cifar10", "--config",
                                str(tmp_path / "run.yaml"), "--set", "train.steps=90", "--device", "cpu"])
    cfg, _ = choose_config(args)
    want = apply_overrides(preset("cifar10"), ["train.steps=90", "train.batch_size=64", "optim.lr_base=0.5",
                                               "train.device=cpu"])
    assert cfg == want


def test_set_wins_over_the_data_flags(tmp_path):
    args = parser().parse_args(["--out", str(tmp_path / "r"), "--device", "cpu", "--set", "train.device=cuda"])
    assert choose_config(args)[0].train.device == "cuda"


def test_train_with_an_unknown_key_in_its_file_exits_with_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("optim:\n  lr_bsae: 0.3\n")
    code = byol(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unknown config key 'optim.lr_bsae'" in err[0]
    assert not (tmp_path / "r").exists()


def test_help_states_the_resolution_order(capsys):
    try:
        byol(["train", "--help"])
    finally:
        out = capsys.readouterr().out
    assert "the preset, then --config FILE, then --data/--data-root/--device/--minutes, then --set" in " ".join(
        out.split())
