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
from training.train import RunFailed, TrainingError, train

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


def _failed_run(tmp_path, kind: str):
    """A run that fails as ``kind`` says: a collapse threshold no encoder meets, or an lr that overflows."""
    bad = ["train.collapse_std=10.0"] if kind == "collapsed" else ["optim.lr_base=1e38", "optim.trust=1e30"]
    cfg = apply_overrides(preset("fmnist-demo"), TINY + bad)
    with pytest.raises(TrainingError) as exc:
        train(cfg, tmp_path, data=_labelled())
    return exc.value


@pytest.mark.parametrize("kind, message", [("collapsed", "collapsed at step 1"), ("diverged", "loss is nan")])
def test_a_failed_run_stops_with_the_step_and_leaves_no_encoder(tmp_path, kind, message):
    err = _failed_run(tmp_path, kind)
    assert isinstance(err, RunFailed) and err.kind == kind and message in str(err) and "\n" not in str(err)
    assert not (tmp_path / "encoder.pt").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert summary["stopped"] == kind and summary["failed_at_step"] == err.step and summary["error"] == str(err)


def test_export_refuses_the_encoder_of_a_run_that_failed_after_it_was_written(tiny_run, tmp_path):
    """A resumed session that diverged leaves the earlier encoder.pt beside a summary saying so."""
    import shutil

    from clients.workflows.exporting import ExportConfig, export

    _, res, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(res.encoder_path, run / "encoder.pt")
    (run / "summary.json").write_text(json.dumps({"metrics": {"stopped": "diverged", "steps": 9,
                                                              "error": "training diverged at step 9: loss is nan"}}))
    with pytest.raises(ValueError, match="refusing to export .*diverged at step 9"):
        export(ExportConfig(encoder=run / "encoder.pt", register=False, out=tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_an_encoder_whose_own_metrics_are_not_finite(tiny_run, tmp_path):
    from clients.workflows.exporting import ExportConfig, export
    from training.artifact import save_encoder

    _, res, _ = tiny_run
    encoder, meta = load_encoder(res.encoder_path)
    bad = save_encoder(tmp_path / "encoder.pt", encoder, meta={**meta, "metrics": {**meta["metrics"],
                                                                                   "final_loss": float("nan")}})
    with pytest.raises(ValueError, match="final_loss is nan"):
        export(ExportConfig(encoder=bad, register=False, out=tmp_path / "bundle"))


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
