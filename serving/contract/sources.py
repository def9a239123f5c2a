"""Image sources, torch-free: Fashion-MNIST IDX, CIFAR-10 (torchvision's layout) and folders of image files.

Every source yields RGB uint8 ``[N, H, W, 3]`` plus optional labels, so training, evaluation and index building
read the same pixels. Labels are never needed for training; they only feed evaluation and probes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from serving.contract.image import SUPPORTED_FORMATS, encode_png, fit, load

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".ico", ".cur", ".mpo",
     ".avif", ".apng"}
)


class SourceError(ValueError):
    """A data source is missing, empty or unreadable; the message says which and where."""


@dataclass
class ImageSet:
    """Images in memory: uint8 ``[N, H, W, 3]``, labels int64 ``[N]`` or None, one URI per image."""

    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    uris: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            classes=self.classes,
            uris=[self.uris[i] for i in idx] if self.uris else [],
        )

    def fingerprint(self) -> str:
        """sha256 of pixels (and labels): identifies exactly what a model was trained or evaluated on."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise SourceError(f"{path} is truncated: {len(data) - offset} bytes of {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise SourceError(
        f"Fashion-MNIST file {stem}[.gz] not found under {root} "
        "(install it with 'apt-get install dataset-fashion-mnist' or pass --data-root)"
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ImageSet:
    """``split``: 'train' (60k) or 'test' (10k). Grayscale is replicated to RGB (the contract is RGB)."""
    root = Path(root) if root else FASHION_MNIST_ROOT
    if not root.is_dir():
        raise SourceError(f"data path not found: {root}")
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise SourceError(f"unknown Fashion-MNIST split {split!r} (train or test)")
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if len(images) != len(labels):
        raise SourceError(f"{root}: {len(images)} images but {len(labels)} labels")
    rgb = np.repeat(images[..., None], 3, axis=-1)
    uris = [f"fashion-mnist:{split}/{i}" for i in range(len(images))]
    return ImageSet(rgb, labels, list(FASHION_MNIST_CLASSES), uris)


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10 (the python pickle layout torchvision downloads to <root>/cifar-10-batches-py)


def load_cifar10(root: str | os.PathLike, split: str = "train") -> ImageSet:
    root = Path(root)
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise SourceError(f"unknown CIFAR-10 split {split!r} (train or test)")
    images, labels = [], []
    for name in names:
        path = base / name
        if not path.is_file():
            raise SourceError(
                f"CIFAR-10 batch {name} not found under {base} (torchvision layout: cifar-10-batches-py/)"
            )
        with open(path, "rb") as fh:
            try:
                batch = pickle.load(fh, encoding="bytes")  # noqa: S301 - the user's own dataset file
            except Exception as exc:
                raise SourceError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    imgs = np.ascontiguousarray(np.concatenate(images))
    uris = [f"cifar10:{split}/{i}" for i in range(len(imgs))]
    return ImageSet(imgs, np.concatenate(labels), list(CIFAR10_CLASSES), uris)


# ----------------------------------------------------------------------------------------------------------
# Folders of image files


def iter_image_files(root: str | os.PathLike) -> Iterator[Path]:
    """Image files under ``root`` (recursive, sorted, hidden entries skipped)."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise SourceError(f"data path not found: {root}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


T = TypeVar("T")


def decode_each(entries: Iterable[T], read: Callable[[T], np.ndarray], limit: int | None = None,
                what: str = "image") -> tuple[list[np.ndarray], list[T], int]:
    """The one decode-and-skip loop: ``read(entry)`` for each entry; an unreadable one is logged, counted, skipped.

    Returns ``(pixels, entries that were read, skipped)``; stops after ``limit`` readable entries. "Unreadable" is
    any ``ValueError`` (``ImageError``, ``SourceError``, a collection's error) or ``OSError``, never a crash.
    """
    pixels, kept, skipped = [], [], 0
    for entry in entries:
        try:
            pixels.append(read(entry))
        except (ValueError, OSError) as exc:
            skipped += 1
            log.warning("skipping %s %s: %s", what, entry, exc)
            continue
        kept.append(entry)
        if limit is not None and len(kept) >= limit:
            break
    return pixels, kept, skipped


def read_files(files: Iterable[Path], size: int, limit: int | None = None) -> tuple[ImageSet, list[Path]]:
    """Decode image files to ``size`` (unreadable ones skipped and counted): the set, and the files it holds.

    The set's ``uris`` are the files' absolute paths on this machine: fine for training and evaluation, never for
    an index — what gets indexed is turned into ``folder:<root>/<relative path>`` first
    (``index.collection.Collection.folder_uris``), so no answer shows a server path."""
    pixels, kept, skipped = decode_each(files, lambda f: load(Path(f).read_bytes(), size), limit)
    images = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return ImageSet(images, uris=[str(Path(f).resolve()) for f in kept], skipped=skipped), kept


def read_folder(root: str | os.PathLike, size: int, labels_from_dirs: bool = False) -> ImageSet:
    """Decode every image under ``root`` to ``size``; unreadable files are skipped and counted, never fatal.

    With ``labels_from_dirs`` the first-level sub-folder name is the class (ImageFolder layout).
    """
    root = Path(root)
    files = list(iter_image_files(root))
    if not files:
        raise SourceError(f"no image files under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    out, kept = read_files(files, size)
    if not len(out):
        raise SourceError(f"none of the {len(files)} image files under {root} could be read")
    if labels_from_dirs:
        names = [(p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "") for p in kept]
        out.classes = sorted(set(names))
        lookup = {c: i for i, c in enumerate(out.classes)}
        out.labels = np.array([lookup[n] for n in names], dtype=np.int64)
    return out


# ----------------------------------------------------------------------------------------------------------
# One name per data set, whatever the user typed


DATASETS = {"fashion-mnist": ("fashion-mnist", "fmnist", "fashion_mnist"), "cifar10": ("cifar10", "cifar-10")}


def dataset_name(spec: str) -> str | None:
    """``fashion-mnist`` / ``cifar10`` for any of their spellings, ``None`` for anything else (a folder path)."""
    low = str(spec).lower()
    return next((name for name, aliases in DATASETS.items() if low in aliases), None)


def load_source(spec: str, split: str = "train", size: int | None = None, labels_from_dirs: bool = False,
                data_root: str | None = None) -> ImageSet:
    """One entry point for every command: ``fashion-mnist``, ``cifar10`` (with ``data_root``) or a folder path.

    ``size`` resizes dataset images through the serving contract when it differs from the native size.
    """
    name = dataset_name(spec)
    if name == "fashion-mnist":
        out = load_fashion_mnist(data_root, split)
    elif name == "cifar10":
        if not data_root:
            raise SourceError("cifar10 needs --data-root (a folder holding cifar-10-batches-py/)")
        out = load_cifar10(data_root, split)
    else:
        return read_folder(spec, size or 64, labels_from_dirs)
    if size and out.images.shape[1] != size:
        out.images = np.stack([fit(Image.fromarray(im), size) for im in out.images])
    return out


# ----------------------------------------------------------------------------------------------------------
# Collection URIs → pixels (dataset items by index; everything else through the collection's bytes)
#
# Every URI kind an index holds resolves here: ``fashion-mnist:<split>/<i>`` / ``cifar10:<split>/<i>`` (dataset
# pixels), and through ``collection.read_bytes`` ``sha256:<hex>`` (uploads kept in the collection),
# ``folder:<root>/<relative path>`` (a file under a folder root registered in the collection's ``roots.json``) and
# the absolute paths / ``file://`` URIs that older installs recorded.


DATASET_URI = re.compile(r"^(fashion-mnist|cifar10):(train|test)/(\d+)$")


@functools.lru_cache(maxsize=4)
def _dataset(name: str, split: str, data_root: str | None) -> ImageSet:
    if name == "cifar10":
        data_root = data_root or os.environ.get("BYOL_CIFAR10_ROOT")
    return load_source(name, split, data_root=data_root)


def _dataset_pixels(uri: str, data_root: str | None) -> np.ndarray | None:
    m = DATASET_URI.match(uri)
    if m is None:
        return None
    name, split, idx = m.groups()
    images = _dataset(name, split, data_root).images
    if int(idx) >= len(images):
        raise SourceError(f"{uri}: index out of range ({len(images)} images in {name} {split})")
    return images[int(idx)]


def read_uri(uri: str, size: int, collection, data_root: str | None = None) -> np.ndarray:
    """A collection item (any URI kind above) as model input ``uint8 [size, size, 3]`` (raises ``ValueError``s
    naming the URI)."""
    pixels = _dataset_pixels(uri, data_root)
    if pixels is None:
        return load(collection.read_bytes(uri), size)
    return pixels if pixels.shape[0] == size else fit(Image.fromarray(pixels), size)


def read_uri_bytes(uri: str, collection, data_root: str | None = None) -> bytes:
    """A collection item's encoded bytes, for any URI kind above (dataset items encoded as PNG): what a thumbnail
    or a rebuild reads. Raises ``ValueError``s (``CollectionError`` / ``SourceError``) naming the URI only."""
    pixels = _dataset_pixels(uri, data_root)
    return collection.read_bytes(uri) if pixels is None else encode_png(pixels)


def read_items(items: Iterable, size: int, collection, data_root: str | None = None) -> ImageSet:
    """Collection items (``.uri``, ``.label``) → an ImageSet with labels when every item has one; unreadable
    items are skipped and counted (a rebuild re-indexes the images themselves, never old vectors)."""
    pixels, kept, skipped = decode_each(items, lambda it: read_uri(it.uri, size, collection, data_root),
                                        what="collection item")
    if not pixels:
        raise SourceError("the collection is empty: build an index from a data set or add images first")
    names = [it.label for it in kept]
    labels = classes = None
    if all(n is not None for n in names):
        classes = sorted(set(names))
        labels = np.array([classes.index(n) for n in names], dtype=np.int64)
    return ImageSet(np.stack(pixels), labels, classes, [it.uri for it in kept], skipped)


__all__ = [
    "ImageSet", "SourceError", "load_source", "load_fashion_mnist", "load_cifar10", "read_folder", "read_files",
    "read_items", "read_uri", "read_uri_bytes", "decode_each", "dataset_name", "iter_image_files",
    "SUPPORTED_FORMATS", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES",
]
