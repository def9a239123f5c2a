"""Presets for a user's own folder of images: the resolution from the images' sizes, the normalisation from their
pixels, the paper's augmentations scaled to that resolution.

``folder_preset(DIR)`` looks at a seeded sample of the files (headers for the sizes, a few hundred decoded images
for mean/std) and returns a config plus the sentence ``byol train`` prints to say which preset and why:

| input | when the median shorter side is | encoder | optimizer, τ |
|---|---|---|---|
| 64 px | < 112 px (icons, thumbnails) | ResNet-18, 3×3/2 stem (32×32 maps) | solo-learn CIFAR LARS, τ 0.99 |
| 128 px | 112–223 px | ResNet-18, ImageNet stem (32×32 maps) | solo-learn's CIFAR LARS, τ 0.99 |
| 224 px | ≥ 224 px (photos) | ResNet-50, ImageNet stem — the paper | the paper's LARS, τ 0.996 |

Every preset keeps the paper's asymmetric views (crop 8–100 %, jitter, grayscale, blur 1.0 / 0.1, solarize 0 / 0.2);
the blur kernel is ~10 % of the side at any resolution (``training.augment.blur_radius``). Folders that would not fit
in memory at the input size stream from disk (``training.stream``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from serving.contract.sources import SourceError, iter_image_files, read_files
from training.augment import AugmentConfig, ViewConfig
from training.config import DataConfig, EmaConfig, EncoderConfig, HeadsConfig, LoopConfig, OptimConfig, TrainConfig

log = logging.getLogger(__name__)

SIZES = (64, 128, 224)
# Without a GPU: the batch per preset size (precision is measured at the start: training.precision). Measured at
# 128 px on 2 cores (``bench/stream_memory.py``, one step's peak RSS of the trainer): batch 256 in fp32 4.6 GiB at
# ~11 img/s; batch 256 in bf16 3.1 GiB at ~40 img/s; batch 128 in fp32 2.8 GiB; the lr follows the batch.
CPU_BATCH = {64: 256, 128: 128, 224: 64}
SIZE_SAMPLE = 200  # files whose headers give the size distribution
STATS_SAMPLE = 256  # files decoded for the normalisation statistics


def choose_size(short_sides: list[int]) -> int:
    """64 / 128 / 224 from the median shorter side: never upsample most images, never waste most pixels."""
    if not short_sides:
        raise SourceError("no readable image among the sampled files")
    median = float(np.median(short_sides))
    return 64 if median < 112 else 128 if median < 224 else 224


def _sample(files: list[Path], n: int, seed: int = 0) -> list[Path]:
    if len(files) <= n:
        return files
    return [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), n, replace=False))]


def short_sides(files: list[Path]) -> list[int]:
    """Shorter side of each file from its header (no pixel decoded); unreadable files are left out."""
    from PIL import Image

    sides = []
    for f in files:
        try:
            with Image.open(f) as img:
                sides.append(min(img.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return sides


def pixel_stats(files: list[Path], size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of the files decoded at ``size`` (the encoder's own normalisation)."""
    images, _ = read_files(files, size)
    if not len(images):
        raise SourceError("none of the sampled image files could be read")
    x = images.images.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(round(float(v), 4) for v in x.mean(0)), tuple(round(max(float(v), 1e-3), 4) for v in x.std(0))


def _views(size: int) -> AugmentConfig:
    """The paper's T / T′ at any size (blur is sized from the output side by the augmentation itself)."""
    return AugmentConfig(view1=ViewConfig(blur_p=1.0, solarize_p=0.0), view2=ViewConfig(blur_p=0.1, solarize_p=0.2))


def _for_size(size: int, mean, std) -> TrainConfig:
    if size == 224:
        return TrainConfig(encoder=EncoderConfig("resnet50", "imagenet", 64, 224, mean, std),
                           heads=HeadsConfig(), augment=_views(size), optim=OptimConfig(lr_base=0.2),
                           ema=EmaConfig(tau_base=0.996),
                           train=LoopConfig(batch_size=256, epochs=300, checkpoint_every=1000, knn_every=0))
    stem = "small-s2" if size == 64 else "imagenet"
    return TrainConfig(encoder=EncoderConfig("resnet18", stem, 64, size, mean, std), heads=HeadsConfig(),
                       augment=_views(size),
                       optim=OptimConfig(lr_base=1.0, weight_decay=1e-5, trust=0.02, clip_lr=True),
                       ema=EmaConfig(tau_base=0.99),
                       train=LoopConfig(batch_size=256, epochs=200, checkpoint_every=1000, knn_every=0))


@dataclass
class Survey:
    """What :func:`folder_preset` found in a folder: what its sentence says beside the config that will run."""

    root: str
    n_files: int
    median_side: int
    forced_size: bool  # --size, not the files' sizes
    stats_images: int  # how many decoded images gave mean/std
    gpu: bool


def folder_preset(root: str | os.PathLike, size: int | None = None, gpu: bool | None = None
                  ) -> tuple[TrainConfig, Survey]:
    """``(config, survey)`` for training on the images under ``root``; ``size`` forces the input resolution.
    ``gpu`` (default: whether CUDA is available) False gives the CPU settings. The sentence ``byol train`` prints
    comes from :func:`explain` on the config that finally runs (after ``--config`` and ``--set``), not from here."""
    root = Path(root)
    files = list(iter_image_files(root))
    if not files:
        raise SourceError(f"no image files under {root}")
    if size is not None and size < 16:
        raise ValueError(f"--size must be at least 16 px, got {size}")
    sides = short_sides(_sample(files, SIZE_SAMPLE))
    chosen = size or choose_size(sides)
    mean, std = pixel_stats(_sample(files, STATS_SAMPLE, seed=1), chosen)
    nearest = min(SIZES, key=lambda s: abs(s - chosen))
    cfg = _for_size(nearest, mean, std)
    cfg.encoder = replace(cfg.encoder, input_size=chosen)
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if not gpu:
        cfg.train = replace(cfg.train, batch_size=CPU_BATCH[nearest])
    cfg.data = DataConfig(source=str(root), holdout_fraction=0.0)
    median = int(np.median(sides)) if sides else 0
    return cfg, Survey(str(root), len(files), median, size is not None, min(len(files), STATS_SAMPLE), gpu)


def explain(cfg: TrainConfig, survey: Survey) -> str:
    """The one line ``byol train`` prints about a folder run, read from the config that runs (contract 6 of the
    design: what ran is what is reported). Precision is not in it: the run measures it and says so itself."""
    e, t = cfg.encoder, cfg.train
    budget = f", {t.max_minutes:g}-minute budget" if t.max_minutes else ""
    return (f"folder preset folder-{e.input_size}: {survey.n_files} image files, median shorter side "
            f"{survey.median_side} px ({'--size' if survey.forced_size else 'chosen from the sizes'}) → "
            f"{e.input_size} px; {e.arch} ({e.stem} stem, width {e.width}, {e.pool} pooling), heads "
            f"{cfg.heads.projector_hidden}→{cfg.heads.out_dim}, batch {t.batch_size}, lr_base {cfg.optim.lr_base:g}, "
            f"τ_base {cfg.ema.tau_base:g}{budget}; normalisation from {survey.stats_images} images: mean {e.mean}, "
            f"std {e.std}" + ("" if survey.gpu else "; no GPU: the CPU settings"))
