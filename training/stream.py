"""Training from image files that need not fit in memory: decode in DataLoader worker processes, random-resized crops
cut from the full-resolution image, RAM bounded by a few batches whatever the folder's size.

Each worker decodes a file (``serving.contract.image.decode``: limits, EXIF orientation, any mode → RGB) and cuts the
two views' random-resized crops straight from the decoded image (``PIL.Image.resize(box=...)``), so a small crop of a
large photo keeps its detail instead of being an upsampled piece of a centre crop. The rest of the views (flip,
colour, blur, solarize) is drawn and applied batched on the training device as before (``training.augment``).

Determinism: the epoch order is a function of (seed, epoch) exactly as :class:`training.data.Batcher`'s, and each
sample's crop boxes come from a generator seeded by (seed, epoch, index) — so which worker decodes what does not
matter, and ``--resume`` (epoch, position, RNG states in the checkpoint) continues with the same batches and views,
bit for bit on CPU. Unreadable files are replaced in their batch by a readable neighbour and reported once each.

Optional cache (``data.cache``): every image decoded once, resized (shorter side) and centre-cropped to a cache side
(1.25 × the input size) into a memory-mapped uint8 file; built once, resumably; later epochs crop from it (cheaper,
at the cost of the crop's full resolution and the image's borders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serving.contract.image import ImageError, decode, fit
from serving.contract.sources import SourceError, iter_image_files
from training.augment import ViewConfig, sample_crop_boxes

log = logging.getLogger(__name__)

CACHE_SCALE = 1.25  # cache side / input size: room for crops without keeping full resolution
CACHE_FLUSH = 256  # images between progress saves while building the cache


@dataclass
class FileSet:
    """The files a streamed run trains on (paths relative to ``root`` in everything it records)."""

    root: Path
    files: list[Path]

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> FileSet:
        root = Path(root)
        files = list(iter_image_files(root))
        if not files:
            raise SourceError(f"no image files under {root}")
        return cls(root, files)

    def fingerprint(self) -> str:
        """sha256 of relative paths, sizes and modification times: identifies the folder without reading it."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root) if f.is_relative_to(self.root) else f}|{st.st_size}|"
                     f"{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: the same function of (seed, epoch) as the in-memory Batcher's."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def _crop_boxes(views: tuple[ViewConfig, ViewConfig], h: int, w: int, seed: int, epoch: int,
                index: int) -> list[tuple[float, float, float, float]]:
    """Both views' crop boxes (x0, y0, x1, y1) for one sample, from its own (seed, epoch, index) generator."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_000_007 + index)
    boxes = []
    for view in views:
        x0, y0, cw, ch = sample_crop_boxes(1, h, w, view.crop_scale, view.crop_ratio, gen)[0].tolist()
        boxes.append((x0, y0, x0 + cw, y0 + ch))
    return boxes


class FolderViews(torch.utils.data.Dataset):
    """``(epoch, index)`` → ``(uint8 [2, S, S, 3] views, index, readable)``; from the files, or from the cache."""

    def __init__(self, files: FileSet, size: int, views: tuple[ViewConfig, ViewConfig], seed: int,
                 cache: np.ndarray | None = None, unreadable: frozenset[int] = frozenset()) -> None:
        self.files, self.size, self.views, self.seed, self.cache = files, size, views, seed, cache
        self.known_unreadable = unreadable  # found while building the cache

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, index: int):
        from PIL import Image

        if self.cache is not None:
            if index in self.known_unreadable:
                raise ImageError("unreadable when the cache was built")
            return Image.fromarray(np.asarray(self.cache[index]))
        return decode(self.files.files[index].read_bytes())

    def __getitem__(self, key: tuple[int, int]):
        from PIL import Image

        epoch, index = key
        try:
            img = self._image(index)
        except (ImageError, OSError) as exc:
            log.debug("unreadable %s: %s", self.files.files[index], exc)
            return torch.zeros((2, self.size, self.size, 3), dtype=torch.uint8), index, False
        w, h = img.size
        views = [np.asarray(img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
                 for box in _crop_boxes(self.views, h, w, self.seed, epoch, index)]
        return torch.from_numpy(np.stack(views)), index, True


class EpochBatches(torch.utils.data.Sampler):
    """This rank's slice of every global batch of one epoch, from ``position`` on (resume), as ``(epoch, i)`` keys."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, position: int, rank: int, world: int) -> None:
        self.order = epoch_order(n, seed, epoch).tolist()
        self.batch_size, self.epoch, self.position, self.rank, self.world = batch_size, epoch, position, rank, world
        self.steps = n // batch_size

    def __len__(self) -> int:
        return self.steps - self.position

    def __iter__(self):
        local = self.batch_size // self.world
        for step in range(self.position, self.steps):
            start = step * self.batch_size + self.rank * local
            yield [(self.epoch, i) for i in self.order[start:start + local]]


def _collate(batch):
    views, index, ok = zip(*batch, strict=True)
    return torch.stack(views), torch.tensor(index), torch.tensor(ok)


class StreamBatcher:
    """The in-memory :class:`training.data.Batcher`'s interface over files: ``next()`` gives this rank's uint8
    ``[b, 2, S, S, 3]`` pre-cropped views of the next global batch on the device; ``state_dict`` is (epoch,
    position) of batches *consumed* (prefetched ones are decoded again after a resume)."""

    def __init__(self, files: FileSet, size: int, views: tuple[ViewConfig, ViewConfig], batch_size: int, seed: int,
                 device: torch.device, rank: int = 0, world_size: int = 1, workers: int = 2,
                 cache: tuple[np.ndarray, frozenset[int]] | None = None) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if len(files) < batch_size:
            raise SourceError(f"only {len(files)} training images for a batch of {batch_size}")
        self.dataset = FolderViews(files, size, views, seed, *(cache or (None, frozenset())))
        self.files, self.batch_size, self.seed, self.device = files, batch_size, seed, device
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.steps_per_epoch = len(files) // batch_size
        self.epoch, self.position, self._it = 0, 0, None
        self.unreadable: set[int] = set()

    def _loader(self):
        sampler = EpochBatches(len(self.files), self.batch_size, self.seed, self.epoch, self.position, self.rank,
                               self.world_size)
        return iter(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if self.workers else None))

    def next(self) -> torch.Tensor:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._it = self._loader()
        views, index, ok = next(self._it)
        self.position += 1
        if not bool(ok.all()):
            views = self._patch(views, index, ok)
        return views.to(self.device, non_blocking=True)

    def _patch(self, views: torch.Tensor, index: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Unreadable files: each reported once, its slot filled with a readable sample of the same batch."""
        for i in index[~ok].tolist():
            if i not in self.unreadable:
                self.unreadable.add(i)
                log.warning("skipping unreadable image %s (%d so far)", self.files.files[i], len(self.unreadable))
        if not bool(ok.any()):
            raise SourceError(f"a whole batch of unreadable images under {self.files.root}")
        good = torch.nonzero(ok).flatten()
        views[~ok] = views[good[torch.arange(int((~ok).sum())) % len(good)]]
        return views

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.position, self._it = int(d["epoch"]), int(d["position"]), None


def build_cache(files: FileSet, size: int, directory: str | os.PathLike) -> tuple[np.ndarray, frozenset[int]]:
    """The memory-mapped cache of ``files`` at ``round(CACHE_SCALE × size)`` px, built (or finished) now, and the
    indices found unreadable. Resumable: progress is saved every ``CACHE_FLUSH`` images, and a rerun continues
    where a killed build stopped."""
    from serving.contract.atomic import atomic_write_json

    side = int(round(CACHE_SCALE * size))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = f"{files.fingerprint()[:16]}-{side}"
    path, progress = directory / f"images-{key}.u8", directory / f"images-{key}.json"
    shape = (len(files), side, side, 3)
    state = json.loads(progress.read_text()) if progress.is_file() else {"done": 0, "unreadable": []}
    cache = np.lib.format.open_memmap(path, mode="r+" if path.is_file() else "w+", dtype=np.uint8, shape=shape)
    if state["done"] < len(files):
        from tqdm import tqdm

        for i in tqdm(range(state["done"], len(files)), initial=state["done"], total=len(files), desc="cache",
                      unit="img"):
            try:
                cache[i] = fit(decode(files.files[i].read_bytes()), side)
            except (ImageError, OSError):
                state["unreadable"].append(i)
            if (i + 1) % CACHE_FLUSH == 0 or i + 1 == len(files):
                cache.flush()
                state["done"] = i + 1
                atomic_write_json(progress, {**state, "shape": list(shape)})
    return np.lib.format.open_memmap(path, mode="r"), frozenset(state["unreadable"])
