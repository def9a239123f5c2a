"""Training data: a seeded train/holdout split, and batches of uint8 images on the training device.

Pixels stay uint8 until augmentation (4× less memory and host→device traffic); on GPU the host copy is pinned
so batches move asynchronously. Epoch order is a pure function of (seed, epoch), so resuming only needs
``(epoch, position)`` to continue with exactly the same batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serving.contract.sources import ImageSet, SourceError, load_cifar10, load_source
from serving.contract.splits import split_holdout

log = logging.getLogger(__name__)
__all__ = ["Batcher", "BatchState", "download_cifar10", "load_training_data", "split_holdout"]


def load_training_data(source: str, size: int, data_root: str | None = None, holdout_fraction: float = 0.1,
                       seed: int = 0, max_images: int | None = None,
                       labels_from_dirs: bool = False, download: bool = False) -> tuple[ImageSet, ImageSet | None]:
    """Read the training split of ``source`` at ``size`` px, split off a seeded holdout, optionally subsample.

    ``download`` (CIFAR-10 only, needs internet) fetches the dataset into ``data_root`` through torchvision first.
    """
    if download and source.lower() in ("cifar10", "cifar-10"):
        if not data_root:
            raise SourceError("data.download needs data.data_root (where to put cifar-10-batches-py/)")
        download_cifar10(data_root)
    data = load_source(source, "train", size=size, labels_from_dirs=labels_from_dirs, data_root=data_root)
    if data.skipped:
        log.warning("%d unreadable image files skipped under %s", data.skipped, source)
    train, holdout = split_holdout(data, holdout_fraction, seed)
    if max_images is not None and max_images < len(train):
        idx = np.sort(np.random.default_rng(seed + 1).permutation(len(train))[:max_images])
        train = train.subset(idx)
    return train, holdout


def download_cifar10(root: str | Path, split: str = "train") -> ImageSet:
    """For online users: let torchvision fetch CIFAR-10 into ``root``, then read it with our own reader."""
    from training.tv import import_torchvision

    tv = import_torchvision()
    tv.datasets.CIFAR10(str(root), train=(split == "train"), download=True)
    return load_cifar10(root, split)


@dataclass
class BatchState:
    epoch: int = 0
    position: int = 0  # batches already taken in this epoch


class Batcher:
    """Endless stream of global batches (last partial batch dropped), sharded by rank under DDP.

    Each rank gets a contiguous ``batch_size // world_size`` slice of the same global batch, so the union over
    ranks is exactly what a single process would see.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if len(images) < batch_size:
            raise SourceError(f"only {len(images)} training images for a batch of {batch_size}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        if device.type == "cuda":
            self.images = self.images.pin_memory()
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(images) // batch_size
        self.state = BatchState()
        self._perm: torch.Tensor | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=gen)

    def next(self) -> torch.Tensor:
        """This rank's uint8 ``[b, H, W, 3]`` slice of the next global batch, on the device."""
        if self.state.position >= self.steps_per_epoch:
            self.state = BatchState(self.state.epoch + 1, 0)
            self._perm = None
        if self._perm is None:
            self._perm = self._order(self.state.epoch)
        start = self.state.position * self.batch_size
        local = self.batch_size // self.world_size
        idx = self._perm[start + self.rank * local: start + (self.rank + 1) * local]
        self.state.position += 1
        return self.images[idx].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "position": self.state.position}

    def load_state_dict(self, d: dict) -> None:
        self.state = BatchState(int(d["epoch"]), int(d["position"]))
        self._perm = None
