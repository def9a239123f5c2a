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

from serving.contract.sources import ImageSet, SourceError, dataset_name, load_cifar10, load_source
from serving.contract.splits import split_holdout

log = logging.getLogger(__name__)
__all__ = ["Batcher", "BatchState", "download_cifar10", "load_training_data", "split_holdout"]


def load_training_data(source: str, size: int, data_root: str | None = None, holdout_fraction: float = 0.1,
                       seed: int = 0, max_images: int | None = None, labels_from_dirs: bool = False,
                       download: bool = False, monitor_on_test: bool = False) -> tuple[ImageSet, ImageSet | None]:
    """Read the training split of ``source`` at ``size`` px, split off a seeded holdout, optionally subsample.

    ``download`` (CIFAR-10 only, needs internet) fetches the dataset into ``data_root`` through torchvision first.
    ``monitor_on_test``: train on the whole train split and let the kNN monitor watch the data set's test split
    (the split the standard protocol scores; the monitor only logs, it never steers training).
    """
    if monitor_on_test and dataset_name(source):
        train, _ = load_training_data(source, size, data_root, 0.0, seed, max_images, download=download)
        return train, load_source(source, "test", size=size, data_root=data_root)
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


DEVICE_RESIDENT_FRACTION = 0.25  # of the GPU's free memory a data set may take to live on the device


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a data set of ``nbytes`` should live on the GPU (small data sets: Fashion-MNIST is 141 MB)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_RESIDENT_FRACTION * free


class Batcher:
    """Endless stream of global batches (last partial batch dropped), sharded by rank under DDP.

    Each rank gets a contiguous ``batch_size // world_size`` slice of the same global batch, so the union over
    ranks is exactly what a single process would see. On a GPU a data set that fits lives on the device (batches
    are gathered there: no host copy, no host sync per step); a larger one is gathered on the host into a pinned
    buffer and copied asynchronously.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if len(images) < batch_size:
            raise SourceError(f"only {len(images)} training images for a batch of {batch_size}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self._staging, self._copied = None, [None, None]
        if fits_on_device(self.images.numel(), device):
            self.images = self.images.to(device)
        elif device.type == "cuda":  # gather into pinned memory, then one asynchronous copy per batch
            local = (batch_size // world_size, *self.images.shape[1:])
            self._staging = [torch.empty(local, dtype=torch.uint8).pin_memory() for _ in range(2)]
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(images) // batch_size
        self.state = BatchState()
        self._perm: torch.Tensor | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.images), generator=gen)  # on the CPU: the same order on every device
        return perm.to(self.device) if self.images.device == self.device and self.device.type == "cuda" else perm

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
        if self.images.device == self.device:
            return self.images[idx.to(self.device, non_blocking=True)]
        if self._staging is None:
            return self.images[idx].to(self.device, non_blocking=True)
        slot = self.state.position % 2  # two buffers: the GPU may still be copying from the other one
        buf, copied = self._staging[slot], self._copied[slot]
        if copied is not None:
            copied.synchronize()  # the copy issued from this buffer two batches ago is done before we overwrite it
        torch.index_select(self.images, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        self._copied[slot] = torch.cuda.Event()
        self._copied[slot].record()
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "position": self.state.position}

    def load_state_dict(self, d: dict) -> None:
        self.state = BatchState(int(d["epoch"]), int(d["position"]))
        self._perm = None
