"""Same seed ⇒ same weights: N steps straight equal N/2 steps, an interruption, and a resume (CPU, bit-exact)."""

import torch

from serving.contract.sources import ImageSet
from tests.conftest import sample_images
from training.checkpoint import load_checkpoint
from training.config import apply_overrides, preset
from training.train import train

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=16", "train.steps=6", "train.max_minutes=none", "train.knn_every=0",
        "train.checkpoint_every=0", "train.progress=false", "train.device=cpu", "optim.warmup_fraction=0.3"]


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
