"""The stored collection: every indexed item's URI and label, kept so a new encoder's index can be rebuilt.

Why it exists: an index belongs to one encoder version; when a retrained encoder is promoted its index must be
rebuilt from the *images*, not from old vectors. So the collection records items (append-only ``items.jsonl``,
one fsynced line per item, a torn last line ignored), and keeps the bytes of images uploaded over HTTP
content-addressed under ``blobs/`` (files on disk and dataset items are referenced by URI only).

URIs: ``sha256:<hex>`` (an uploaded image stored here), ``file:///abs/path`` or a plain absolute path (read here),
and dataset items such as ``fashion-mnist:<split>/<i>`` (resolved to pixels by ``serving.contract.sources``).
Only :mod:`index.writes` writes to a collection, always together with the index.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from index.fsio import atomic_write_bytes, now_iso

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
BLOBS_DIR = "blobs"
BLOB_PREFIX = "sha256:"


class CollectionError(ValueError):
    """An item or URI the collection cannot record or resolve; the message names it."""


@dataclass
class Item:
    uri: str
    label: str | None = None
    added_at: str = ""


class Collection:
    """The item record and uploaded bytes under one directory (``$BYOL_HOME/collection``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------ items
    def add(self, items: Iterable[Item], removed: bool = False) -> int:
        """Append items (fsynced before returning); returns how many. Safe across threads and processes (flock).

        Crash and disk-full safe: a torn last line (a crash mid-append) is cut off before appending, so it never
        swallows the next record; an append that fails (ENOSPC, EIO) is cut back out and its error re-raised.
        """
        stamp = now_iso()
        lines = []
        for it in items:
            if not it.uri:
                raise CollectionError("collection item without a uri")
            row = {"uri": it.uri, "label": None if it.label is None else str(it.label),
                   "added_at": it.added_at or stamp}
            lines.append(json.dumps({**row, "removed": True} if removed else row) + "\n")
        if not lines:
            return 0
        path = self.root / ITEMS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _append_lines(fd, path, "".join(lines).encode())
        finally:
            os.close(fd)  # releases the flock
        return len(lines)

    def remove(self, uris: Iterable[str]) -> int:
        """Record removals (fsynced): a rebuilt index must not bring back what a user removed. Adding the same URI
        again later brings it back."""
        return self.add((Item(u) for u in uris), removed=True)

    def items(self) -> Iterator[Item]:
        """Items in first-added order, one per URI (a later record of the same URI updates its label; a removal
        record drops it)."""
        path = self.root / ITEMS_FILE
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

    # ------------------------------------------------------------------------------------------ bytes
    def blob_path(self, digest: str) -> Path:
        return self.root / BLOBS_DIR / digest[:2] / digest

    def store_bytes(self, data: bytes) -> str:
        """Keep an uploaded image's bytes (content-addressed, written once, atomically); returns its URI."""
        if not data:
            raise CollectionError("cannot store an empty image")
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.is_file():
            atomic_write_bytes(path, data)
        return BLOB_PREFIX + digest

    def read_bytes(self, uri: str) -> bytes:
        """The stored bytes of a ``sha256:`` URI, or the file behind a ``file://`` / absolute-path URI."""
        if uri.startswith(BLOB_PREFIX):
            digest = uri[len(BLOB_PREFIX):]
            path = self.blob_path(digest)
            if len(digest) != 64 or not path.is_file():
                raise CollectionError(f"{uri}: no stored image with that hash in {self.root}")
            return path.read_bytes()
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not path.is_absolute():
            raise CollectionError(f"cannot resolve URI {uri!r} (expected sha256:, a dataset item, file:// or an "
                                  "absolute path)")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CollectionError(f"{uri}: cannot read the file: {exc.strerror}") from None


def _append_lines(fd: int, path: Path, data: bytes) -> None:
    """Under the caller's flock: cut a torn last line, append ``data``, fsync; on failure cut back and re-raise."""
    start = os.fstat(fd).st_size
    if start:
        tail = os.pread(fd, min(start, 1 << 16), max(0, start - (1 << 16)))
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start - len(tail) + cut + 1 if cut >= 0 else (0 if len(tail) == start else None)
            if keep is None:  # a torn line longer than 64 KiB: end it instead of searching further back
                os.write(fd, b"\n")
            else:
                log.warning("%s: cutting a torn last line of %d bytes (a crash during an append)", path,
                            start - keep)
                os.ftruncate(fd, keep)
            start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            log.error("%s: cutting back a failed append failed too (%s); the next append cuts the torn line", path,
                      exc)
        raise
