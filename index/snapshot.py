"""FAISS snapshots of one index directory: ``snap-*/`` holding ``index.faiss`` + ``meta.json``, nothing per item.

    snap-*/        index.faiss + meta.json (dim, encoder version, factory, next id, nprobe/efSearch, tombstones, ...)
    store.db       the items, the log of writes since the snapshot, and the name of the current snapshot
                   (``index.item_store``); ``LOCK`` the writer lock (``index.durable``)

A snapshot is written under a temporary name, fsynced and renamed; it becomes the current one only when the item
store names it (in the same commit that drops the log rows it holds), so a crash before that leaves the previous
one current, and the new directory is removed at the next open. Snapshot files are never changed in place, which
is what makes memory-mapping them safe: a mapping keeps reading its (possibly since deleted) file, whatever a later
save does. A compaction writes the FAISS file and a small meta.json: its cost does not grow with the items' metadata.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from index.chooser import parse_factory
from index.db import remove_database
from index.errors import IndexStoreError
from index.fsio import fsync_dir, fsync_file, now_iso
from index.item_store import STORE_FILE, ItemStore

if TYPE_CHECKING:
    from index.vector_index import VectorIndex

FORMAT_VERSION = 2  # 2: the snapshot holds no items (index.item_store)
MMAP_MIN_BYTES = 256 * 2**20  # ~250k vectors of 256-d: below this, reading the file is quick and keeps it simple
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"


def write_snapshot(directory: str | os.PathLike, write_index: Callable[[Path], None], meta: dict) -> str:
    """Write ``write_index(path)`` + meta as a new, complete ``snap-*`` directory; returns its name (not current
    until the item store names it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    snap = Path(tempfile.mkdtemp(prefix=".snap-", dir=directory))
    try:
        write_index(snap / INDEX_FILE)
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
    return final.name


def drop_others(directory: str | os.PathLike, keep: str) -> None:
    """Remove every snapshot but ``keep`` (older ones, and any left by a crash before the store named it)."""
    for old in [*Path(directory).glob("snap-*"), *Path(directory).glob(".snap-*")]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def read_meta(snap: Path, format_version: int) -> dict:
    """A snapshot's meta.json (refusing a newer format)."""
    try:
        meta = json.loads((snap / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexStoreError(f"index {snap.parent}: cannot read {snap.name}/{META_FILE}: {exc}") from None
    if meta.get("format_version", 0) > format_version:
        raise IndexStoreError(f"index {snap.parent}: format {meta['format_version']} is newer than supported")
    return meta


def use_mmap(faiss_file: str | os.PathLike, mmap: bool | None) -> bool:
    """``mmap`` True/False decides; None maps files of at least ``MMAP_MIN_BYTES``."""
    return bool(mmap) if mmap is not None else Path(faiss_file).stat().st_size >= MMAP_MIN_BYTES


def read_index(faiss_file: str | os.PathLike, mmap: bool | None = None):
    """``(faiss index, mapped)``: the snapshot's FAISS file, memory-mapped or read (see :func:`use_mmap`)."""
    import faiss

    mapped = use_mmap(faiss_file, mmap)
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mapped else 0
    return faiss.read_index(str(faiss_file), flags), mapped


# ---------------------------------------------------------------------------------------------- a VectorIndex on disk
def meta_json(index: VectorIndex, extra: dict | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION, "dim": index.dim, "encoder_version": index.encoder_version,
        "factory": index.factory, "next_id": index.next_id, "count": len(index), "nprobe": index.nprobe,
        "ef_search": index.ef_search, "tuning": index.tuning, "tombstones": sorted(index.tombstones),
        "metric": "inner_product", "saved_at": now_iso(), **(extra or {}),
    }


def store_info(index: VectorIndex) -> dict:
    """What the item store records about the index it goes with."""
    return {"dim": index.dim, "encoder_version": index.encoder_version, "factory": index.factory}


def snapshot_index(index: VectorIndex, directory: str | os.PathLike, extra: dict | None = None) -> str:
    """A new FAISS snapshot of ``index`` under ``directory`` (not current until an item store names it)."""
    return write_snapshot(directory, lambda path: _write_faiss(index, path), meta_json(index, extra))


def _write_faiss(index: VectorIndex, path: Path) -> None:
    """The FAISS file through a Python writer: FAISS's own file writer only prints a failed close (a full disk) and
    returns, which would publish a truncated snapshot; a Python write raises."""
    import faiss

    with open(path, "wb") as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)
        try:
            faiss.write_index(index._index, writer)
        finally:
            del writer


def index_items(index: VectorIndex, items: Callable[[], Iterable[tuple[int, dict]]] | None = None
                ) -> Iterable[tuple[int, dict]]:
    """``(id, metadata)`` of a freshly built index, by id: from ``items()`` when given (an index built without
    metadata), else from its metadata dict."""
    if items is not None:
        return items()
    if index.metadata is None:
        raise IndexStoreError("this index keeps no metadata: give its items, or save it through index.durable")
    return ((i, index.metadata[i]) for i in sorted(index.metadata))


def save_index(index: VectorIndex, directory: str | os.PathLike,
               items: Callable[[], Iterable[tuple[int, dict]]] | None = None) -> None:
    """Write a freshly built index as the index of ``directory``: a FAISS snapshot, and its items (its metadata, or
    ``items()``) in the directory's item store, which names the snapshot in the same commit (a new store is written
    complete under a temporary name and renamed: a crash leaves no half-made store)."""
    rows = index_items(index, items)
    directory = Path(directory)
    name = snapshot_index(index, directory)
    exists = (directory / STORE_FILE).is_file()
    file = STORE_FILE if exists else f".{STORE_FILE}.tmp"
    if not exists:
        remove_database(directory / file)
    store = ItemStore(directory, create=not exists, version=index.encoder_version, file=file)
    try:
        store.replace_all(rows, name, 0, store_info(index))
        store.checkpoint()
    finally:
        store.close()
    if not exists:
        fsync_file(directory / file)
        os.rename(directory / file, directory / STORE_FILE)
        fsync_dir(directory)
    drop_others(directory, name)


def load_index(directory: str | os.PathLike, mmap: bool | None = None) -> VectorIndex:
    """The index saved at ``directory`` with its metadata in memory (writes logged since its snapshot are not
    applied: open the directory with :class:`index.durable.DurableIndex` for the served state)."""
    if not (Path(directory) / STORE_FILE).is_file():
        raise IndexStoreError(f"no index at {directory} ({STORE_FILE} is missing)")
    store = ItemStore(directory, read_only=True)
    try:
        index = open_index(Path(directory) / store.info()["snapshot"], mmap)[0]
        index.metadata = dict(store.iter_items())
    finally:
        store.close()
    return index


def open_index(snap: Path, mmap: bool | None = None) -> tuple[VectorIndex, dict]:
    """The FAISS snapshot directory ``snap`` as an index without a metadata dict, and its meta.json.

    ``mmap``: True maps the FAISS file, False reads it, None maps it when large (:func:`use_mmap`).
    """
    from index.vector_index import VectorIndex

    meta = read_meta(snap, FORMAT_VERSION)
    faiss_file = snap / INDEX_FILE
    index = VectorIndex.__new__(VectorIndex)
    index.dim, index.encoder_version = int(meta["dim"]), str(meta["encoder_version"])
    index.factory = str(meta["factory"])
    index.spec = parse_factory(index.factory)
    try:
        index._index, mapped = read_index(faiss_file, mmap)
    except Exception as exc:
        raise IndexStoreError(f"index {snap.parent}: cannot read {snap.name}/{INDEX_FILE}: "
                              f"{str(exc).splitlines()[0]}") from None
    index.nprobe, index.ef_search = int(meta.get("nprobe", 0)), int(meta.get("ef_search", 0))
    index.tuning = meta.get("tuning")
    index.next_id = int(meta["next_id"])
    index.tombstones = {int(i) for i in meta.get("tombstones", [])}
    index.metadata = None
    index._runtime(str(faiss_file) if mapped else None)
    return index, meta
