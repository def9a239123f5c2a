"""The real fmnist-demo preset, shrunk: artefacts, abort paths, and learning that beats random init."""

import json

import numpy as np
import pytest
import torch

from serving.contract.sources import ImageSet
from tests.conftest import sample_images
from training.artifact import ENCODER_FORMAT, load_encoder
from training.config import apply_overrides, preset
from training.networks import build_encoder
from training.train import TrainingError, train

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=16", "train.steps=4", "train.max_minutes=none", "train.knn_every=2",
        "train.checkpoint_every=2", "train.progress=false", "train.device=cpu", "train.log_every=1"]


def _labelled(n=64):
    images = sample_images(n)
    return ImageSet(images, np.arange(n) % 10)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(preset("fmnist-demo"), TINY)
    return cfg, train(cfg, out, data=_labelled(), holdout=_labelled(32)), out


def test_encoder_file_holds_f_theta_alone(tiny_run):
    cfg, res, _ = tiny_run
    obj = torch.load(res.encoder_path, weights_only=True)
    assert obj["format"] == ENCODER_FORMAT
    assert set(obj["state_dict"]) == set(build_encoder(cfg.encoder).state_dict())
    assert not any(k.startswith(("projector", "predictor", "branch", "target")) for k in obj["state_dict"])


def test_encoder_meta_describes_the_run(tiny_run):
    cfg, res, _ = tiny_run
    _, meta = load_encoder(res.encoder_path)
    chosen = res.metrics["precision"]  # what ran: the measured choice in place of "auto"
    ran = cfg.to_dict()
    ran["train"].update(precision=chosen["precision"], channels_last=chosen["channels_last"])
    assert meta["config"] == ran and meta["parent_version"] is None
    assert len(meta["data_fingerprint"]) == 64 and meta["metrics"]["steps"] == 4
    assert "holdout_knn" in meta["metrics"]


def test_run_dir_has_summary_and_tensorboard(tiny_run):
    _, res, out = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == res.steps == 4
    assert set(summary["history"]) == {"2", "4"}
    assert any((out / "tb").iterdir())


def test_existing_run_is_not_overwritten(tiny_run):
    cfg, _, out = tiny_run
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, out, data=_labelled())


def test_collapse_aborts_with_a_message(tmp_path):
    cfg = apply_overrides(preset("fmnist-demo"), TINY + ["train.collapse_std=10.0"])
    with pytest.raises(TrainingError, match="collapsed at step 1"):
        train(cfg, tmp_path, data=_labelled())


def test_nan_loss_aborts_with_a_message(tmp_path):
    cfg = apply_overrides(preset("fmnist-demo"), TINY + ["optim.lr_base=1e38", "optim.trust=1e30"])
    with pytest.raises(TrainingError, match="loss is nan"):
        train(cfg, tmp_path, data=_labelled())


def test_init_from_starts_at_the_parents_weights(tiny_run, tmp_path):
    cfg, res, _ = tiny_run
    child = train(cfg, tmp_path / "child", data=_labelled(), init_from=res.checkpoint_path, stop_after=0)
    parent, loaded = torch.load(res.checkpoint_path, weights_only=True), torch.load(child.checkpoint_path,
                                                                                    weights_only=True)
    assert child.steps == 0
    for part in ("online", "target"):
        assert all(torch.equal(v, loaded[part][k]) for k, v in parent[part].items())


def test_time_budget_shortens_the_schedule(tmp_path):
    cfg = apply_overrides(preset("fmnist-demo"), TINY + ["train.steps=100000", "train.max_minutes=0.05",
                                                         "train.calibrate_steps=2", "train.knn_every=0"])
    res = train(cfg, tmp_path, data=_labelled())
    assert res.metrics["total_steps"] < 100000 and res.steps <= res.metrics["total_steps"]
