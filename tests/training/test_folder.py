"""Folder presets: the resolution from the images' sizes, the statistics from their pixels, the paper's recipe on a
GPU and the one designed for minutes without one."""

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


def test_without_a_gpu_the_preset_is_the_cpu_recipe_and_says_so(tmp_path):
    """The GPU keeps the paper's network and views; the CPU gets the small network, batch and strong colour views
    of training/folder.py at every size — the same normalisation and resolution either way."""
    folder = make_folder(tmp_path, 6, 150)
    gpu, _ = folder_preset(folder, gpu=True)
    cpu, why = preset_and_why(folder, gpu=False)
    assert (gpu.encoder.arch, gpu.encoder.width, gpu.train.batch_size) == ("resnet18", 64, 256)
    assert gpu.augment.view1.crop_scale == (0.08, 1.0) and gpu.augment.view1.hue == 0.1  # the paper's views
    assert (cpu.encoder.arch, cpu.encoder.width, cpu.encoder.pool, cpu.train.batch_size) == ("resnet10", 16, "grid2",
                                                                                            CPU_BATCH)
    assert cpu.augment.view1.hue == 0.5 and cpu.augment.view2.solarize_p == 0.2  # colour no shortcut, still T / T′
    assert (cpu.encoder.input_norm, gpu.encoder.input_norm) == ("image", "dataset")  # exposure no shortcut either
    assert "no GPU" in why and "resnet10" in why and f"batch {CPU_BATCH}" in why
    assert "bf16" not in why and (cpu.train.precision, gpu.train.precision) == ("auto", "auto")  # measured, not assumed
    assert (cpu.encoder.input_size, cpu.encoder.mean, cpu.encoder.std) == (gpu.encoder.input_size, gpu.encoder.mean,
                                                                         gpu.encoder.std)


@pytest.mark.parametrize("side", [40, 150, 400])
def test_the_cpu_recipe_blurs_in_proportion_to_the_side(tmp_path, side):
    cfg, _ = folder_preset(make_folder(tmp_path, 3, side), gpu=False)
    size = cfg.encoder.input_size
    assert cfg.augment.view1.blur_sigma[1] == pytest.approx(max(0.2, 2.0 * size / 224), abs=0.01)


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
