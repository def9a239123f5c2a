"""The stored collection: every indexed item's URI and label, kept so a new encoder's index can be rebuilt.

Why it exists: an index belongs to one encoder version; when a retrained encoder is promoted its index must be
rebuilt from the *images*, not from old vectors. So the collection records items (append-only ``items.jsonl``,
one fsynced line per item, a torn last line ignored), and keeps the bytes of images uploaded over HTTP
content-addressed under ``blobs/`` (files on disk and dataset items are referenced by URI only).

URIs: ``sha256:<hex>`` (an uploaded image stored here), ``fashion-mnist:<split>/<i>``, ``cifar10:<split>/<i>``
(read through :mod:`serving.contract.sources`), ``file:///abs/path`` or a plain absolute path.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.contract.atomic import atomic_write_bytes
from serving.contract.bundle import now_iso
from serving.paths import collection_dir

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
BLOBS_DIR = "blobs"
_DATASET_URI = re.compile(r"^(fashion-mnist|cifar10):(train|test)/(\d+)$")
_BLOB_URI = re.compile(r"^sha256:([0-9a-f]{64})$")


class CollectionError(ValueError):
    """An item or URI the collection cannot record or resolve; the message names it."""


@dataclass
class Item:
    uri: str
    label: str | None = None
    added_at: str = ""


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root else collection_dir()


def add_items(items: Iterable[Item | dict], root: str | os.PathLike | None = None) -> int:
    """Append items (fsynced before returning); returns how many. Safe across threads and processes (flock)."""
    lines = []
    stamp = now_iso()
    for it in items:
        removed = isinstance(it, dict) and bool(it.get("removed"))
        it = it if isinstance(it, Item) else Item(**{k: it.get(k) for k in ("uri", "label", "added_at")})
        if not it.uri:
            raise CollectionError("collection item without a uri")
        label = None if it.label is None else str(it.label)
        row = {"uri": it.uri, "label": label, "added_at": it.added_at or stamp}
        lines.append(json.dumps({**row, "removed": True} if removed else row) + "\n")
    if not lines:
        return 0
    path = _root(root) / ITEMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return len(lines)


def remove_items(uris: Iterable[str], root: str | os.PathLike | None = None) -> int:
    """Record removals (fsynced): a rebuilt index must not bring back what a user removed. Adding the same URI
    again later brings it back."""
    return add_items([{"uri": u, "label": None, "added_at": "", "removed": True} for u in uris], root)


def iter_items(root: str | os.PathLike | None = None) -> Iterator[Item]:
    """Items in first-added order, one per URI (a later record of the same URI updates its label; a removal
    record drops it)."""
    path = _root(root) / ITEMS_FILE
    if not path.is_file():
        return
    latest: dict[str, Item] = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an unreadable line (torn write?)", path, n)
                continue
            if row.get("removed"):
                latest.pop(row["uri"], None)
                continue
            item = Item(row["uri"], row.get("label"), row.get("added_at", ""))
            if item.uri in latest:
                item.added_at = latest[item.uri].added_at
            latest[item.uri] = item
    yield from latest.values()


def blob_path(digest: str, root: str | os.PathLike | None = None) -> Path:
    return _root(root) / BLOBS_DIR / digest[:2] / digest


def store_image_bytes(data: bytes, root: str | os.PathLike | None = None) -> str:
    """Keep an uploaded image's bytes (content-addressed, written once, atomically); returns its URI."""
    if not data:
        raise CollectionError("cannot store an empty image")
    digest = hashlib.sha256(data).hexdigest()
    path = blob_path(digest, root)
    if not path.is_file():
        atomic_write_bytes(path, data)
    return f"sha256:{digest}"


@functools.lru_cache(maxsize=4)
def _dataset(name: str, split: str, data_root: str | None):
    from serving.contract.sources import load_source

    return load_source(name, split, data_root=data_root)


def _dataset_pixels(uri: str, data_root: str | None) -> np.ndarray:
    name, split, idx = _DATASET_URI.match(uri).groups()
    if name == "cifar10":
        data_root = data_root or os.environ.get("BYOL_CIFAR10_ROOT")
    images = _dataset(name, split, data_root).images
    i = int(idx)
    if i >= len(images):
        raise CollectionError(f"{uri}: index out of range ({len(images)} images in {name} {split})")
    return images[i]


def _file_path(uri: str) -> Path:
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not path.is_absolute():
        raise CollectionError(f"cannot resolve URI {uri!r} (expected sha256:, fashion-mnist:, cifar10:, "
                              "file:// or an absolute path)")
    return path


def load_image_bytes(uri: str, root: str | os.PathLike | None = None, data_root: str | None = None) -> bytes:
    """The encoded bytes of an item (dataset items are encoded as PNG)."""
    m = _BLOB_URI.match(uri)
    if m:
        path = blob_path(m.group(1), root)
        if not path.is_file():
            raise CollectionError(f"{uri}: no stored image with that hash in {_root(root)}")
        return path.read_bytes()
    if _DATASET_URI.match(uri):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(_dataset_pixels(uri, data_root)).save(buf, format="PNG")
        return buf.getvalue()
    path = _file_path(uri)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CollectionError(f"{uri}: cannot read the file: {exc.strerror}") from None


def load_image(uri: str, size: int, root: str | os.PathLike | None = None, data_root: str | None = None
               ) -> np.ndarray:
    """An item as model input ``uint8 [size, size, 3]`` through the image contract (raises on bad images)."""
    from PIL import Image

    from serving.contract.image import fit, load

    if _DATASET_URI.match(uri):
        pixels = _dataset_pixels(uri, data_root)
        return pixels if pixels.shape[0] == size else fit(Image.fromarray(pixels), size)
    return load(load_image_bytes(uri, root, data_root), size)


__all__ = ["Item", "CollectionError", "add_items", "remove_items", "iter_items", "store_image_bytes",
           "load_image_bytes", "load_image", "blob_path"]
