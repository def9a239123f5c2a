"""Everything a run carries from step to step, how it is built, saved and restored.

A run is resumable bit for bit on CPU because :class:`TrainState` is the whole of it: the networks, the optimizer,
every RNG (torch, the augmentation generator) and the data position, plus the schedule horizon K and the time-budget
bookkeeping. :func:`checkpoint_payload` writes exactly that, :func:`restore` reads it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from serving.contract.sources import ImageSet, SourceError, dataset_name, iter_image_files
from training.augment import BYOLAugment
from training.byol import Branch, Online, make_target
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import Batcher, load_training_data
from training.distributed import DistInfo
from training.errors import TrainingError
from training.optim import build_lars
from training.precision import Choice, choose
from training.schedules import scaled_lr
from training.stream import FileSet, StreamBatcher, build_cache

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """One run in progress. ``total_steps`` is K, the schedules' horizon (lowered once by the time budget);
    ``calibrated`` says whether that already happened; ``elapsed_before`` is the training time of earlier
    sessions of this run (resumes), so the budget counts the whole run."""

    cfg: TrainConfig
    online: Online
    target: Branch
    optimizer: torch.optim.Optimizer
    augment: BYOLAugment
    generator: torch.Generator
    batcher: Batcher
    peak_lr: float
    total_steps: int
    warmup_steps: int | None = 0  # None until the time budget has fixed K (see warmup_steps())
    step: int = 0
    calibrated: bool = False
    elapsed_before: float = 0.0
    history: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)  # training.precision.Choice.as_dict() of the run's first session


def starting_point(cfg: TrainConfig, ckpt_path: Path, resume: bool,
                   init_from: Path | None) -> tuple[TrainConfig, dict | None, dict | None]:
    """``(config, own checkpoint, parent checkpoint)`` to start from; refuses to overwrite a run by accident.

    A resumed run goes on with the config it started with (not the caller's); a run started ``init_from`` a parent
    takes the parent's encoder/heads config (its weights would not fit otherwise), with a warning when they differ.
    """
    own = None
    if resume:
        if not ckpt_path.is_file():
            raise TrainingError(f"nothing to resume: {ckpt_path} not found")
        own = load_checkpoint(ckpt_path)
        cfg = TrainConfig.from_dict(own["config"])
    elif ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} already exists: pass --resume to continue it, or choose another --out")
    parent = load_checkpoint(init_from) if init_from is not None else None
    if parent is not None:
        pcfg = TrainConfig.from_dict(parent["config"])
        if (pcfg.encoder, pcfg.heads) != (cfg.encoder, cfg.heads):
            log.warning("init_from: using the parent's encoder/heads config (%s)", pcfg.encoder)
            cfg.encoder, cfg.heads = pcfg.encoder, pcfg.heads
    return cfg, own, parent


def training_data(cfg: TrainConfig, data: ImageSet | None,
                  holdout: ImageSet | None) -> tuple[ImageSet | FileSet, ImageSet | None]:
    """The caller's images if given (retrain passes old + new), else ``cfg.data``'s — a :class:`FileSet` when a
    folder is streamed (:func:`streams`); checked against the encoder here so that a wrong size fails with its
    cause instead of deep inside a convolution."""
    if data is None and streams(cfg):
        files = FileSet.scan(cfg.data.source)
        log.info("streaming %d files from %s (decoded in %d worker processes)", len(files), files.root,
                 cfg.data.workers)
        return files, None
    if data is None:
        d = cfg.data
        data, holdout = load_training_data(d.source, cfg.encoder.input_size, d.data_root, d.holdout_fraction,
                                           d.seed, d.max_images, d.labels_from_dirs, d.download, d.monitor_on_test)
    if len(data) == 0:
        raise SourceError("no training images")
    if isinstance(data, FileSet):
        return data, holdout
    if data.images.shape[1:] != (cfg.encoder.input_size, cfg.encoder.input_size, 3):
        raise SourceError(f"training images are {list(data.images.shape[1:])}, the encoder expects "
                          f"{cfg.encoder.input_size}×{cfg.encoder.input_size}×3")
    return data, holdout


def streams(cfg: TrainConfig) -> bool:
    """Whether the run reads its folder as it trains: ``data.stream``, or (None) when decoding the whole folder at
    the input size would take more than ``data.memory_budget_mb``. Data sets (IDX, CIFAR) always load in memory."""
    d = cfg.data
    if dataset_name(d.source) or d.stream is False:
        return False
    if d.stream:
        return True
    n = sum(1 for _ in iter_image_files(d.source))
    return n * cfg.encoder.input_size ** 2 * 3 > d.memory_budget_mb * 2**20


def make_batcher(cfg: TrainConfig, data: ImageSet | FileSet, device: torch.device, dist_info: DistInfo):
    """The in-memory :class:`Batcher`, or a :class:`StreamBatcher` (same interface) over a folder's files."""
    t = cfg.train
    if isinstance(data, ImageSet):
        return Batcher(data.images, t.batch_size, t.seed, device, dist_info.rank, dist_info.world_size)
    cache = build_cache(data, cfg.encoder.input_size, cfg.data.cache) if cfg.data.cache else None
    return StreamBatcher(data, cfg.encoder.input_size, (cfg.augment.view1, cfg.augment.view2), t.batch_size, t.seed,
                         device, dist_info.rank, dist_info.world_size, cfg.data.workers, cache)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """K before any time budget: ``train.steps`` if set, else ``train.epochs`` × steps per epoch."""
    t = cfg.train
    if t.steps is None and t.epochs is None:
        raise ValueError("set train.steps or train.epochs")
    return int(t.steps) if t.steps is not None else int(t.epochs) * steps_per_epoch


def build_state(cfg: TrainConfig, data: ImageSet | FileSet, device: torch.device, dist_info: DistInfo) -> TrainState:
    """A fresh run at step 0. The build order is part of reproducibility: the global seed is set right before the
    online network draws its weights, so every rank (and every resume) starts from the same ones."""
    t, o = cfg.train, cfg.optim
    torch.manual_seed(t.seed)  # identical init on every rank (the target is copied before DDP wraps online)
    online = Online(cfg).to(device)
    is_cuda = device.type == "cuda"
    if dist_info.enabled and is_cuda:
        online = nn.SyncBatchNorm.convert_sync_batchnorm(online)
    target = make_target(online)
    batcher = make_batcher(cfg, data, device, dist_info)
    peak_lr = scaled_lr(o.lr_base, t.batch_size)  # t.batch_size is the GLOBAL batch
    optimizer = build_lars(online, peak_lr, o.momentum, o.weight_decay, o.trust, o.clip_lr)
    augment = BYOLAugment(cfg.augment, cfg.encoder.input_size).to(device)
    # The same augmentation stream on every rank: each draws the global batch's parameters and keeps its slice.
    generator = torch.Generator(device=device).manual_seed(t.seed * 7919)
    total = total_steps(cfg, batcher.steps_per_epoch)
    return TrainState(cfg, online, target, optimizer, augment, generator, batcher, peak_lr, total,
                      warmup_steps(cfg, total, calibrated=t.max_minutes is None), calibrated=t.max_minutes is None)


def choose_precision(state: TrainState, device: torch.device, dist_info: DistInfo) -> Choice:
    """``train.precision`` / ``train.channels_last`` resolved (measured when ``auto``: :mod:`training.precision`)
    and applied: the networks take the chosen memory layout, and the run's config says what it runs — so
    ``config.yaml`` and the checkpoint record the choice and a resume reuses it instead of measuring again."""
    t = state.cfg.train
    local = t.batch_size // dist_info.world_size
    size = state.cfg.encoder.input_size
    shape = (local, 2, size, size, 3) if isinstance(state.batcher, StreamBatcher) else (local, size, size, 3)
    o = state.cfg.optim
    optim = {"lr": state.peak_lr, "momentum": o.momentum, "weight_decay": o.weight_decay, "trust": o.trust,
             "clip_lr": o.clip_lr}
    choice = choose(state.online, state.target, state.augment, shape, t.precision, t.channels_last, optim, device,
                    distributed=dist_info.enabled)
    layout = torch.channels_last if choice.channels_last else torch.contiguous_format
    state.online.to(memory_format=layout)
    state.target.to(memory_format=layout)
    state.cfg = replace(state.cfg, train=replace(t, precision=choice.precision, channels_last=choice.channels_last))
    if choice.measured or not state.precision:
        state.precision = choice.as_dict()
    return choice


def warmup_steps(cfg: TrainConfig, total: int, calibrated: bool = True) -> int | None:
    """Warmup length in steps, fixed once and never recomputed (a warmup that followed K made the lr jump ~3× mid-
    warmup when the time budget lowered K): ``optim.warmup_steps`` if set; else ``optim.warmup_fraction`` × K —
    of the final K, so under a time budget it is decided at calibration (``None`` until then, and the lr is 0 for
    those few timed steps: the warmup then starts from 0 with the slope of the real run)."""
    o = cfg.optim
    if o.warmup_steps is not None:
        return int(o.warmup_steps)
    return int(round(o.warmup_fraction * total)) if calibrated else None


def ddp_model(online: Online, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """What the step calls: ``online`` itself, or its DDP wrapper under torchrun (the state keeps the raw module,
    so checkpoints never carry ``module.`` prefixes)."""
    if not dist_info.enabled:
        return online
    return nn.parallel.DistributedDataParallel(online, device_ids=[device.index] if device.type == "cuda" else None)


def load_weights(state: TrainState, ckpt: dict) -> None:
    """Online, target and optimizer (momentum) from a checkpoint, nothing else: how ``init_from`` starts a child
    run at its parent's weights with fresh schedules over its own step budget."""
    state.online.load_state_dict(ckpt["online"])
    state.target.load_state_dict(ckpt["target"])
    state.optimizer.load_state_dict(ckpt["optimizer"])


def restore(state: TrainState, ckpt: dict) -> None:
    """Put a run back exactly where :func:`checkpoint_payload` left it (``--resume``): weights, step, horizon,
    budget bookkeeping, data position and every RNG, so the next batches and augmentations are the same."""
    load_weights(state, ckpt)
    state.step, state.total_steps = int(ckpt["step"]), int(ckpt["total_steps"])
    state.calibrated, state.elapsed_before = bool(ckpt["calibrated"]), float(ckpt["elapsed_s"])
    state.warmup_steps = ckpt.get("warmup_steps", state.warmup_steps)
    state.batcher.load_state_dict(ckpt["data"])
    set_rng_state(ckpt["rng"], state.generator)
    state.history = ckpt.get("history", {})
    state.precision = ckpt.get("precision", {})


def checkpoint_payload(state: TrainState, elapsed_s: float) -> dict:
    """The checkpoint's content (keys are a file format: ``restore``, ``init_from`` and export read them).
    ``elapsed_s`` is the whole run's training time so far, which only the caller's clock knows."""
    return {
        "online": state.online.state_dict(), "target": state.target.state_dict(),
        "optimizer": state.optimizer.state_dict(), "step": state.step, "total_steps": state.total_steps,
        "warmup_steps": state.warmup_steps,
        "calibrated": state.calibrated, "elapsed_s": elapsed_s, "data": state.batcher.state_dict(),
        "rng": rng_state(state.generator), "config": state.cfg.to_dict(),
        "encoder_config": state.cfg.encoder.to_dict(), "history": state.history, "precision": state.precision,
    }


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG state a bit-identical resume needs: torch's global one, the augmentation generator's, CUDA's."""
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
