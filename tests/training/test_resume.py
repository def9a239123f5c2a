"""Same seed ⇒ same weights: N steps straight equal N/2 steps, an interruption, and a resume (CPU, bit-exact)."""

import torch

from serving.contract.sources import ImageSet
from tests.conftest import sample_images
from training.checkpoint import load_checkpoint
from training.config import apply_overrides, preset
from training.train import train

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=16", "train.steps=6", "train.max_minutes=none", "train.knn_every=0",
        "train.checkpoint_every=0", "train.progress=false", "train.device=cpu", "optim.warmup_fraction=0.3",
        "train.precision=fp32", "train.channels_last=false"]  # bit-exact for a fixed precision


def _data():
    return ImageSet(sample_images(48))


def test_resume_is_bit_identical(tmp_path):
    cfg = apply_overrides(preset("fmnist-demo"), TINY)
    straight = train(cfg, tmp_path / "straight", data=_data())
    half = train(cfg, tmp_path / "split", data=_data(), stop_after=3)
    assert half.steps == 3 and load_checkpoint(half.checkpoint_path)["step"] == 3
    resumed = train(cfg, tmp_path / "split", data=_data(), resume=True)
    assert resumed.steps == 6
    a, b = load_checkpoint(straight.checkpoint_path), load_checkpoint(resumed.checkpoint_path)
    for part in ("online", "target"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"


def test_a_resumed_auto_run_keeps_the_precision_it_measured(tmp_path):
    """``auto`` is measured once, by the first session: the checkpoint's config holds the choice, so the resume
    trains in it without measuring again, bit-identical to a straight run given that choice explicitly."""
    cfg = apply_overrides(preset("fmnist-demo"), [*TINY, "train.precision=auto", "train.channels_last=auto"])
    half = train(cfg, tmp_path / "split", data=_data(), stop_after=3)
    ckpt = load_checkpoint(half.checkpoint_path)
    chosen = ckpt["precision"]
    assert chosen["images_per_s"] and chosen["asked"] == {"precision": "auto", "channels_last": "auto"}
    assert (ckpt["config"]["train"]["precision"], ckpt["config"]["train"]["channels_last"]) == \
        (chosen["precision"], chosen["channels_last"])
    resumed = train(cfg, tmp_path / "split", data=_data(), resume=True)
    assert resumed.metrics["precision"] == chosen  # the first session's measurement, not a new one
    fixed = apply_overrides(cfg, [f"train.precision={chosen['precision']}",
                                  f"train.channels_last={chosen['channels_last']}"])
    straight = train(fixed, tmp_path / "straight", data=_data())
    assert straight.metrics["precision"]["images_per_s"] == {}  # given explicitly: nothing measured
    a, b = load_checkpoint(straight.checkpoint_path), load_checkpoint(resumed.checkpoint_path)
    for key, value in a["online"].items():
        assert torch.equal(value, b["online"][key]), f"online.{key} differs"
