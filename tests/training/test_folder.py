"""Folder presets: the resolution from the images' sizes, the statistics from their pixels, and the CPU settings
(batch and bf16 autocast) when there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serving.contract.sources import SourceError
from training.folder import CPU_BATCH, choose_size, explain, folder_preset


def preset_and_why(folder, **kwargs):
    cfg, survey = folder_preset(folder, **kwargs)
    return cfg, explain(cfg, survey)


def make_folder(root, n: int, side: int, value: int | None = None):
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side + 10, 3), dtype=np.uint8) if value is None else \
            np.full((side, side + 10, 3), value, np.uint8)
        Image.fromarray(pixels).save(root / ("a/b" if i % 2 else "a") / f"{i}.png")
    return root


@pytest.mark.parametrize(("sides", "size"), [([40, 60, 80], 64), ([150, 160, 200], 128), ([300, 1000, 500], 224)])
def test_the_size_follows_the_median_shorter_side(sides, size):
    assert choose_size(sides) == size


def test_a_folder_of_150_px_images_gets_the_128_px_preset_with_its_own_statistics(tmp_path):
    cfg, why = preset_and_why(make_folder(tmp_path, 12, 150, value=51), gpu=True)
    assert cfg.encoder.input_size == 128 and "folder-128" in why and "12 image files" in why
    assert cfg.encoder.mean == pytest.approx((0.2,) * 3, abs=0.01) and max(cfg.encoder.std) < 0.01  # all grey 51


def test_without_a_gpu_the_preset_trains_a_smaller_batch_and_says_so(tmp_path):
    folder = make_folder(tmp_path, 6, 150)
    gpu, _ = folder_preset(folder, gpu=True)
    cpu, why = preset_and_why(folder, gpu=False)
    assert gpu.train.batch_size == 256 and cpu.train.batch_size == CPU_BATCH[128] and "no GPU" in why
    assert "bf16" not in why and (cpu.train.precision, gpu.train.precision) == ("auto", "auto")  # measured, not assumed
    assert cpu.encoder == gpu.encoder and cpu.optim == gpu.optim  # the lr follows the batch by lr_base × batch/256


def test_size_forces_the_resolution_and_an_empty_folder_is_an_error(tmp_path):
    cfg, why = preset_and_why(make_folder(tmp_path / "f", 4, 150), size=64, gpu=True)
    assert cfg.encoder.input_size == 64 and "--size" in why
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        folder_preset(tmp_path / "empty")


def test_the_sentence_says_what_will_run_after_every_override(tmp_path):
    """It is written from the final config: ``--set`` changes it, and nothing the run does not do is claimed."""
    from argparse import Namespace

    from clients.commands.train import choose_config

    folder = make_folder(tmp_path / "f", 6, 150)
    args = Namespace(preset=None, data=str(folder), size=None, device="cpu", config=None, minutes=3.0,
                     data_root=None, overrides=["train.batch_size=48", "encoder.width=24", "optim.lr_base=0.7"])
    cfg, why = choose_config(args)
    assert (cfg.train.batch_size, cfg.encoder.width, cfg.train.max_minutes) == (48, 24, 3.0)
    assert "batch 48" in why and "width 24" in why and "lr_base 0.7" in why and "3-minute budget" in why
    assert "bf16" not in why and "fp32" not in why  # precision is measured by the run, which says so itself
