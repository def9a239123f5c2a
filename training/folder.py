"""Presets for a user's own folder of images: the resolution from the images' sizes, the normalisation from their
pixels, and a recipe for the machine that trains: the paper's on a GPU, one designed for minutes on a CPU.

``folder_preset(DIR)`` looks at a seeded sample of the files (headers for the sizes, a few hundred decoded images
for mean/std) and returns a config plus the survey ``byol train`` prints its sentence from:

| input | median shorter side | with a GPU (the paper's recipe) | without one (issue 18) |
|---|---|---|---|
| 64 px | < 112 px (icons) | ResNet-18, 3×3/2 stem, τ 0.99, batch 256 | ResNet-10 w16, batch 64, per-image norm |
| 128 px | 112–223 px | ResNet-18, ImageNet stem, τ 0.99, batch 256 | the same |
| 224 px | ≥ 224 px (photos) | ResNet-50, ImageNet stem, τ 0.996 — the paper | the same |

**The GPU presets** keep the paper's asymmetric views (crop 8–100 %, jitter, grayscale, blur 1.0 / 0.1, solarize
0 / 0.2; the blur kernel ~10 % of the side at any resolution, ``training.augment.blur_radius``) and its heads.

**The CPU presets** (:func:`_cpu_for_size`) were chosen by ``bench/folder_ablation.py`` on generated photo-like
folders (``clients.workflows.synthetic``: items of ten shapes at random places, scales and tints on varied
backgrounds), scored like the demo (``bench/results/folder_ablation.json``: 3 minutes of training on one core, a
seeded 5,000 / 1,000 split, kNN@20 beside raw pixels, 35.4 %, and a random-init encoder). On a CPU the paper's
recipe is hopeless in minutes: ResNet-18 at width 64 took 37 s a step at 64 px and batch 256 (6 steps in 3 minutes,
then NaN). What the rounds kept, and why:

- the ``fmnist-demo`` shape — ResNet-10 at width 16, heads 1024→128, lr_base 2.0, τ_base 0.98, LARS without LARC
  clipping — so that minutes buy thousands of steps, with the ImageNet stem (7×7/2 + max-pool) and batch 64: 2.7×
  the steps of the demo's 3×3/2 stem at batch 128 in the same minutes; f's last stage pooled on a 2×2 grid;
- **each image normalised by its own statistics** (``encoder.input_norm='image'``: channel means removed, RMS
  contrast divided out, inside the exported graph). The encoders trained without it found the photos' exposure
  and colour cast, which two crops of one picture share: their neighbours agreed on brightness 89–95 % of the time
  (raw pixels' 66 %) and on the class 35–36 % on two seeds in three (raw pixels 35.4 %; one seed reached 50 %),
  whatever the lr, τ, width, crops or blur. With it: 59.0 and 54.1 % on two seeds. A random-init encoder with the
  same normalisation already scores 54.9 % (it sees shapes once exposure is gone); what training adds shows most
  in the linear probe, 64.6 / 54.8 % against its 38.2 %;
- **colour invariance the paper's mild jitter does not give**: brightness/contrast 0.8, saturation 1.0, hue 0.5
  (any hue), grayscale 0.5 (with the paper's jitter the trained encoder stayed at the level of a random one, 20 %);
  crops 30–100 % (15 % and 50 % did worse on one seed each); the blur's sigma scaled to the side (0.1–2.0 px at
  224).

Every size keeps the same network (a step costs ~4× at 128 px and ~12× at 224 px, so the small network is what keeps
10 minutes meaningful there). Folders that would not fit in memory at the input size stream from disk
(``training.stream``).
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
CPU_BATCH = 64  # without a GPU (the precision is measured at the start: training.precision)
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


def _cpu_views(size: int) -> AugmentConfig:
    """The CPU presets' T / T′: the paper's asymmetry (blur 1.0 / 0.1, solarize 0 / 0.2) with crops from 30 % and
    colour jitter strong enough that colour is no shortcut (module docstring)."""
    common = dict(crop_scale=(0.3, 1.0), brightness=0.8, contrast=0.8, saturation=1.0, hue=0.5, grayscale_p=0.5,
                  blur_sigma=(0.1, round(max(0.2, 2.0 * size / 224), 2)))
    return AugmentConfig(view1=ViewConfig(blur_p=1.0, solarize_p=0.0, **common),
                         view2=ViewConfig(blur_p=0.1, solarize_p=0.2, **common))


def _cpu_for_size(size: int, mean, std) -> TrainConfig:
    """A recipe for minutes on a CPU at any size (the module docstring says what was measured)."""
    return TrainConfig(encoder=EncoderConfig("resnet10", "imagenet", 16, size, mean, std, pool="grid2",
                                             input_norm="image"),
                       heads=HeadsConfig(projector_hidden=1024, out_dim=128, predictor_hidden=1024),
                       augment=_cpu_views(size),
                       optim=OptimConfig(lr_base=2.0, warmup_fraction=0.05),  # the paper's LARS otherwise
                       ema=EmaConfig(tau_base=0.98),
                       train=LoopConfig(batch_size=CPU_BATCH, epochs=100, checkpoint_every=1000, knn_every=0))


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
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    cfg = (_for_size if gpu else _cpu_for_size)(nearest, mean, std)
    cfg.encoder = replace(cfg.encoder, input_size=chosen)
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
            f"τ_base {cfg.ema.tau_base:g}{budget}; " + (
                "each image normalised by its own channel means and contrast" if e.input_norm == "image" else
                f"normalisation from {survey.stats_images} images: mean {e.mean}, std {e.std}")
            + ("" if survey.gpu else "; no GPU: the CPU settings"))
