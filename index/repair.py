"""Recovering a damaged item store of an index directory (``byol index repair --model VERSION``).

Why a salvage and not a restore: SQLite finds structural damage (a torn or zeroed page, a truncated file) when it
reads it; what is still readable is almost everything, and what is lost can be brought back — every item is also in
the collection, which the next reconcile re-embeds. So the repair keeps every readable row, then makes the items and
FAISS hold the same ids again, and keeps the damaged file beside it for whoever wants to look.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from index import db
from index.durable import _load, _take_lock
from index.errors import IndexStoreError
from index.item_store import SCHEMA, STORE_FILE, ItemStore
from index.snapshot import drop_others, open_index, snapshot_index, store_info

log = logging.getLogger(__name__)

def repair(directory: str | os.PathLike) -> dict:
    """Recover a damaged item store: keep every row SQLite can still read, then make items and vectors agree.

    Takes the directory's writer lock (stop the server first). Items whose vectors were lost with the log are
    dropped from the store and vectors whose item was lost are dropped from FAISS: both come back from the collection
    at the next reconcile (``/admin/reload`` of another version, or ``byol index build --from-collection``). The
    damaged file is kept beside it as ``store.db.damaged``. Returns what was found and kept.
    """
    directory = Path(directory)
    lock_fd = _take_lock(directory)
    try:
        return db.repair_file(directory / STORE_FILE, SCHEMA, ["info", "items", "log"],
                              lambda: _problems(directory), lambda tmp: _agree(directory, tmp.name))
    finally:
        os.close(lock_fd)


def _problems(directory: Path) -> list[str]:
    try:
        store = ItemStore(directory)
    except IndexStoreError as exc:
        return [str(exc)]
    try:
        problems = store.check()
        if not problems:
            _load(directory, store, read_only=True)
        return problems
    except IndexStoreError as exc:
        return [str(exc)]
    finally:
        store.close()


def _agree(directory: Path, file: str) -> dict:
    """In the salvaged store ``file``: FAISS (snapshot + readable log) and the items made to hold the same ids, a
    new snapshot written and named (the log emptied)."""
    store = ItemStore(directory, file=file)
    try:
        info = store.info()
        name = info.get("snapshot")
        if not name or not (directory / name).is_dir():
            snaps = sorted(directory.glob("snap-*"))
            if not snaps:
                raise IndexStoreError(f"index {directory}: no FAISS snapshot left; rebuild it with: byol index build "
                                      "--from-collection --force")
            name = snaps[-1].name
        index, _ = open_index(directory / name, mmap=False)
        seq, top = int(info.get("snapshot_seq", 0)), -1
        for row_seq, op, ids, vectors in store.log(after=seq):
            if op == "add":
                index.add_prepared(vectors.reshape(-1, index.dim), None, ids)
                top = max(top, int(ids.max()))
            else:
                index.remove(ids)
            seq = row_seq
        index.next_id = max(index.next_id, top + 1, store.max_id() + 1)
        live = set(index.live_ids().tolist())
        have = set(store.all_ids())
        no_vector, no_item = sorted(have - live), sorted(live - have)
        if no_vector:
            store.delete_items(no_vector)
        if no_item:
            index.remove(no_item)
        name = snapshot_index(index, directory, {"log_seq": seq})
        store.switch_snapshot(name, seq, {**store_info(index), "format": info.get("format", 2)})
        store.checkpoint()
        drop_others(directory, name)
        return {"items_without_vector": len(no_vector), "vectors_without_item": len(no_item),
                "items": store.count()}
    finally:
        store.close()

