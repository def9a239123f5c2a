"""The on-disk layout of one index directory, owned here: nobody outside ``index/`` looks inside it.

    CURRENT        name of the current snapshot, switched atomically (a crash leaves the previous one readable)
    snap-*/        index.faiss + items.jsonl (id → metadata) + meta.json (dim, encoder version, factory, ...)
    wal.log, LOCK  the durable index's write-ahead log and writer lock (``index.durable``)

A snapshot is written under a temporary name, fsynced, renamed, and only then named by ``CURRENT``; older
snapshots are deleted after the switch. Snapshot files are never changed in place, which is what makes memory-mapping
them safe: a mapping keeps reading its (possibly since deleted) file, whatever a later save does.

Memory-mapped loading (:func:`read_index`): an index file of at least ``MMAP_MIN_BYTES`` (or any, when asked) is
mapped with FAISS's ``IO_FLAG_MMAP_IFC`` (Flat and HNSW storage, IVF lists) instead of read: opening 1M×256 vectors
takes milliseconds instead of reading ~1 GB, processes opening the same snapshot share its pages, and only the
pages searches touch are read. A mapped FAISS index must never be written to (FAISS aborts the process):
:class:`index.vector_index.VectorIndex` reads it into memory before its first write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from index.errors import IndexStoreError
from index.fsio import atomic_write_bytes, fsync_dir, fsync_file

MMAP_MIN_BYTES = 256 * 2**20  # ~250k vectors of 256-d: below this, reading the file is quick and keeps it simple
CURRENT = "CURRENT"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
ITEMS_FILE = "items.jsonl"


def exists(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a published index (a directory without ``CURRENT`` holds none)."""
    return (Path(directory) / CURRENT).is_file()


def save_snapshot(directory: str | os.PathLike, write_index: Callable[[Path], None], metadata: dict[int, dict],
                  meta: dict) -> None:
    """Write ``write_index(path)`` + items + meta as a new snapshot and switch ``CURRENT`` to it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    snap = Path(tempfile.mkdtemp(prefix=".snap-", dir=directory))
    try:
        write_index(snap / INDEX_FILE)
        with open(snap / ITEMS_FILE, "w") as fh:
            for i, m in metadata.items():
                fh.write(json.dumps({"id": i, "meta": m}) + "\n")
        (snap / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        for f in snap.iterdir():
            fsync_file(f)
        fsync_dir(snap)
        final = directory / f"snap-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{snap.name[6:]}"
        os.rename(snap, final)
        fsync_dir(directory)
    except BaseException:
        shutil.rmtree(snap, ignore_errors=True)
        raise
    atomic_write_bytes(directory / CURRENT, (final.name + "\n").encode())
    for old in directory.glob("snap-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".snap-*"):  # left by a crashed save
        shutil.rmtree(stale, ignore_errors=True)


def load_snapshot(directory: str | os.PathLike, format_version: int) -> tuple[Path, dict, dict[int, dict]]:
    """The current snapshot's FAISS file, its meta.json and its id → metadata map."""
    directory = Path(directory)
    if not exists(directory):
        raise IndexStoreError(f"no index at {directory} ({CURRENT} is missing)")
    snap = directory / (directory / CURRENT).read_text().strip()
    try:
        meta = json.loads((snap / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexStoreError(f"index {directory}: cannot read {META_FILE}: {exc}") from None
    if meta.get("format_version", 0) > format_version:
        raise IndexStoreError(f"index {directory}: format {meta['format_version']} is newer than supported")
    metadata = {}
    with open(snap / ITEMS_FILE) as fh:
        for line in fh:
            row = json.loads(line)
            metadata[int(row["id"])] = row["meta"]
    return snap / INDEX_FILE, meta, metadata


def use_mmap(faiss_file: str | os.PathLike, mmap: bool | None) -> bool:
    """``mmap`` True/False decides; None maps files of at least ``MMAP_MIN_BYTES``."""
    return bool(mmap) if mmap is not None else Path(faiss_file).stat().st_size >= MMAP_MIN_BYTES


def read_index(faiss_file: str | os.PathLike, mmap: bool | None = None):
    """``(faiss index, mapped)``: the snapshot's FAISS file, memory-mapped or read (see :func:`use_mmap`)."""
    import faiss

    mapped = use_mmap(faiss_file, mmap)
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mapped else 0
    return faiss.read_index(str(faiss_file), flags), mapped
