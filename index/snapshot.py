"""The on-disk layout of one index directory, owned here: nobody outside ``index/`` looks inside it.

    CURRENT        name of the current snapshot, switched atomically (a crash leaves the previous one readable)
    snap-*/        index.faiss + items.jsonl (id → metadata) + meta.json (dim, encoder version, factory, ...)
    wal.log, LOCK  the durable index's write-ahead log and writer lock (``index.durable``)

A snapshot is written under a temporary name, fsynced, renamed, and only then named by ``CURRENT``; older
snapshots are deleted after the switch.
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
