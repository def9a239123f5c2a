"""Stores written before the SQLite item store (format 1), converted on first open, atomically.

Format 1, an index directory: ``CURRENT`` naming ``snap-*/`` (``index.faiss``, ``items.jsonl`` of id → metadata,
``meta.json`` with ``wal_seq``) and ``wal.log`` (framed records ``BWL1, length, crc32`` + JSON header + float32
vectors, of the adds and removes since the snapshot). A collection: ``items.jsonl`` (one line per add or removal of
a URI) and ``roots.json``.

Why convert instead of reading both forever: one layout to test, and the memory of format 1 (every item a Python
dict) is what format 2 exists to remove. How: the whole converted state is written beside the old files (a new
FAISS snapshot, a new database under a temporary name), fsynced, and the database is renamed into place last —
the single atomic step. Before it the old layout is untouched and still the one opened (a crash leaves a stray
temporary the next attempt removes); after it the new one is, and the old files are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from index.errors import IndexStoreError
from index.fsio import fsync_dir, fsync_file

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
WAL_FILE = "wal.log"
ITEMS_FILE = "items.jsonl"
ROOTS_FILE = "roots.json"
CONVERTING = ".converting"
_MAGIC = b"BWL1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(payload)
_HEAD = struct.Struct("<I")  # header json length inside the payload


def is_old_index(directory: str | os.PathLike) -> bool:
    from index.item_store import STORE_FILE

    return (Path(directory) / CURRENT).is_file() and not (Path(directory) / STORE_FILE).is_file()


def read_log(path: Path) -> list[tuple[dict, np.ndarray | None]]:
    """The records of a format-1 ``wal.log``: its intact prefix; a torn tail (a crash mid-append, never
    acknowledged) is ignored; damage followed by intact records is refused (converting would drop them)."""
    data = path.read_bytes() if path.is_file() else b""
    records, pos = [], 0
    while pos + _FRAME.size <= len(data):
        magic, length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if magic != _MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        (hlen,) = _HEAD.unpack_from(data, start)
        header = json.loads(data[start + _HEAD.size:start + _HEAD.size + hlen])
        body = data[start + _HEAD.size + hlen:end]
        records.append((header, np.frombuffer(body, dtype=np.float32).reshape(-1, header["dim"]) if body else None))
        pos = end
    if pos < len(data) and data.find(_MAGIC, pos + 1) != -1:
        raise IndexStoreError(f"{path}: damaged at byte {pos} of {len(data)} with records after it; the index was "
                              "not converted to the SQLite item store (that would drop them). Repair it with the "
                              "release that wrote it (byol index repair), or rebuild it: byol index build "
                              "--from-collection --force")
    if pos < len(data):
        log.warning("%s: ignoring a torn tail of %d bytes (a crash during an append)", path, len(data) - pos)
    return records


def convert_index(directory: str | os.PathLike) -> None:
    """Convert a format-1 index directory in place (the caller holds its writer lock)."""
    from index.item_store import STORE_FILE, ItemStore
    from index.snapshot import open_index, snapshot_index, store_info

    directory = Path(directory)
    work = directory / CONVERTING
    shutil.rmtree(work, ignore_errors=True)  # left by a conversion that crashed before its commit
    old_snap = directory / (directory / CURRENT).read_text().strip()
    for stray in [*directory.glob("snap-*"), *directory.glob(".snap-*")]:
        if stray.name != old_snap.name:
            shutil.rmtree(stray, ignore_errors=True)
    index, meta = open_index(old_snap, mmap=False)
    index.metadata = {}
    with open(old_snap / ITEMS_FILE) as fh:
        for line in fh:
            row = json.loads(line)
            index.metadata[int(row["id"])] = row["meta"]
    applied = 0
    for header, vectors in read_log(directory / WAL_FILE):
        if header["seq"] <= int(meta.get("wal_seq", 0)):
            continue  # already in the snapshot
        ids = np.asarray(header["ids"], dtype=np.int64)
        if header["op"] == "add":
            index.add_prepared(vectors, header["meta"], ids)
        elif header["op"] == "remove":
            index.remove(ids)
        else:
            raise IndexStoreError(f"{directory / WAL_FILE}: unknown record {header['op']!r}")
        applied += 1
    if len(index.metadata) + len(index.tombstones) != index.ntotal:
        raise IndexStoreError(f"index {directory}: {index.ntotal} vectors but {len(index.metadata)} items (corrupt?)")
    if index.spec.kind == "Flat":  # IDMap2 → IDMap: its id → position hash map cost ~50 MB per million items
        index = index.without_tombstones()
    name = snapshot_index(index, directory)
    work.mkdir()
    store = ItemStore(work, create=True, version=index.encoder_version)
    try:
        store.replace_all(((i, index.metadata[i]) for i in sorted(index.metadata)), name, 0, store_info(index))
        store.checkpoint()
    finally:
        store.close()
    fsync_file(work / STORE_FILE)
    os.rename(work / STORE_FILE, directory / STORE_FILE)  # the commit point of the conversion
    fsync_dir(directory)
    for done in (CURRENT, WAL_FILE):
        (directory / done).unlink(missing_ok=True)
    shutil.rmtree(old_snap, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    log.info("converted %s to the SQLite item store: %d items, %d logged writes applied", directory,
             len(index.metadata), applied)


def tidy_index(directory: Path) -> None:
    """Format-1 files left by a conversion that crashed after its commit (the database is current)."""
    for done in (CURRENT, WAL_FILE):
        (directory / done).unlink(missing_ok=True)
    shutil.rmtree(directory / CONVERTING, ignore_errors=True)


def old_collection(root: Path) -> tuple[list[tuple[str, str | None, str]], dict[str, str]]:
    """A format-1 collection as it reads: live items ``(uri, label, added_at)`` in first-added order (a later
    record relabels, a removal drops, a re-add comes back last) and the folder roots."""
    latest: dict[str, tuple[str, str | None, str]] = {}
    path = root / ITEMS_FILE
    if path.is_file():
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
                first = latest.get(row["uri"])
                latest[row["uri"]] = (row["uri"], row.get("label"), first[2] if first else row.get("added_at", ""))
    roots: dict[str, str] = {}
    if (root / ROOTS_FILE).is_file():
        try:
            roots = {str(k): str(v) for k, v in json.loads((root / ROOTS_FILE).read_text())["roots"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexStoreError(f"{root / ROOTS_FILE} is unreadable ({exc}); the collection was not converted") \
                from None
    return list(latest.values()), roots


def is_old_collection(root: Path, db_file: str) -> bool:
    return ((root / ITEMS_FILE).is_file() or (root / ROOTS_FILE).is_file()) and not (root / db_file).is_file()


def tidy_collection(root: Path) -> None:
    for done in (ITEMS_FILE, ROOTS_FILE, ".roots.lock"):
        (root / done).unlink(missing_ok=True)
