"""The item store of one index directory (``store.db``): everything about its items that is not a vector.

Tables::

    info   key → value: format, dim, encoder version, factory, the FAISS snapshot it goes with, the last log
           sequence number that snapshot holds
    items  id (FAISS id), uri, label, meta (the item's metadata as JSON, exactly as it was added)
    log    seq, op ('add' | 'remove'), ids (int64 BLOB), vectors (float32 BLOB, adds only): every write since the
           FAISS snapshot, replayed into FAISS at open and deleted once a snapshot holds it

Why this shape: the serving process keeps no Python object per item (a search reads the metadata of its k hits
by id, in one query; an add deduplicates by URI through an index), so its memory is the vectors' own; one write is
one transaction (items and its log row together), so ``items`` and FAISS can never disagree after a crash; and a
compaction writes the FAISS file and deletes log rows, never every item again. The snapshot's name lives here, so
switching to a new snapshot is the same commit that drops the log rows it holds.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index import db

STORE_FILE = "store.db"
FORMAT = 2  # 1 was the file layout (snapshot items.jsonl + wal.log), converted on open (index.legacy)
SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, uri TEXT, label TEXT, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_uri ON items (uri);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, op TEXT NOT NULL, ids BLOB NOT NULL, vectors BLOB);
"""
REPAIR = ("stop the server, then recover it with: byol index repair --model {version} (keeps every readable row; "
          "what is lost comes back from the collection at the next reload), or rebuild it with: byol index build "
          "--from-collection --model {version} --force")

LogRow = tuple[int, str, np.ndarray, "np.ndarray | None"]


def _delete(conn: sqlite3.Connection, ids: list[int]) -> None:
    for part in db.chunks(ids):
        conn.execute(f"DELETE FROM items WHERE id IN ({db.marks(len(part))})", part)


def _meta_row(item_id: int, meta: dict) -> tuple:
    label = meta.get("label")
    return int(item_id), meta.get("uri"), None if label is None else str(label), json.dumps(meta)


class ItemStore:
    """One ``store.db``. Not locked here: :class:`index.durable.DurableIndex` orders calls with its own lock."""

    def __init__(self, directory: str | os.PathLike, *, create: bool = False, read_only: bool = False,
                 version: str = "", file: str = STORE_FILE) -> None:
        self.path = Path(directory) / file
        self.recovery = REPAIR.format(version=version or Path(directory).name)
        self._conn = db.connect(self.path, create=create, read_only=read_only, recovery=self.recovery)
        if create:
            try:
                self._conn.executescript(SCHEMA)
            except sqlite3.Error as exc:
                self._conn.close()
                raise db.translate(exc, self.path, self.recovery) from None

    # ------------------------------------------------------------------------------------------ plumbing
    def _q(self, sql: str, params=()) -> list:
        return db.query(self._conn, self.path, sql, params, self.recovery)

    def _tx(self):
        return db.transaction(self._conn, self.path, self.recovery)

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """One read transaction: every read inside sees the database as of its first read (a writer in another
        process may commit meanwhile — an open reads the snapshot name, the log and the count as one state)."""
        try:
            self._conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise db.translate(exc, self.path, self.recovery) from None
        try:
            yield
        finally:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self._conn.close()

    def checkpoint(self) -> None:
        try:
            db.checkpoint(self._conn)
        except sqlite3.Error as exc:
            raise db.translate(exc, self.path, self.recovery) from None

    # ------------------------------------------------------------------------------------------ info
    def info(self) -> dict:
        return {k: json.loads(v) for k, v in self._q("SELECT key, value FROM info")}

    @staticmethod
    def _put_info(conn: sqlite3.Connection, values: dict) -> None:
        conn.executemany("INSERT INTO info (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                         "excluded.value", [(k, json.dumps(v)) for k, v in values.items()])

    # ------------------------------------------------------------------------------------------ reads
    def count(self) -> int:
        return int(self._q("SELECT count(*) FROM items")[0][0])

    def max_id(self) -> int:
        """The largest id of an item (-1 when none)."""
        row = self._q("SELECT max(id) FROM items")[0][0]
        return -1 if row is None else int(row)

    def metadata(self, ids: Iterable[int]) -> dict[int, dict]:
        """id → metadata of those of ``ids`` present (one query per 900 ids: a search's k hits are one)."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict] = {}
        for part in db.chunks(wanted):
            out.update((int(i), json.loads(m)) for i, m in
                       self._q(f"SELECT id, meta FROM items WHERE id IN ({db.marks(len(part))})", part))
        return out

    def present(self, ids: Iterable[int]) -> list[int]:
        wanted = sorted({int(i) for i in ids})
        out: list[int] = []
        for part in db.chunks(wanted):
            out += [int(r[0]) for r in self._q(f"SELECT id FROM items WHERE id IN ({db.marks(len(part))})", part)]
        return sorted(out)

    def ids_by_uri(self, uris: Iterable[str]) -> dict[str, list[int]]:
        """uri → its live ids (ascending), for the ``uris`` the store holds."""
        wanted = sorted({u for u in uris if u})
        out: dict[str, list[int]] = {}
        for part in db.chunks(wanted):
            for uri, i in self._q(f"SELECT uri, id FROM items WHERE uri IN ({db.marks(len(part))}) ORDER BY id",
                                  part):
                out.setdefault(uri, []).append(int(i))
        return out

    def iter_items(self, batch: int = 10_000) -> Iterator[tuple[int, dict]]:
        """Every item ``(id, metadata)`` by id, read ``batch`` rows at a time (memory stays flat)."""
        last = -1
        while True:
            rows = self._q("SELECT id, meta FROM items WHERE id > ? ORDER BY id LIMIT ?", (last, batch))
            if not rows:
                return
            for i, m in rows:
                yield int(i), json.loads(m)
            last = int(rows[-1][0])

    def uris_after(self, last: int, batch: int = 10_000) -> list[tuple[int, str]]:
        """``(id, uri)`` of up to ``batch`` items with a URI and an id above ``last``, by id (what a reconcile
        compares with the collection, a batch at a time)."""
        rows = self._q("SELECT id, uri FROM items WHERE id > ? AND uri IS NOT NULL ORDER BY id LIMIT ?",
                       (last, batch))
        return [(int(i), u) for i, u in rows]

    def log(self, after: int = -1) -> Iterator[LogRow]:
        """Log rows with ``seq > after``, in order, one at a time."""
        last = after
        while True:
            rows = self._q("SELECT seq, op, ids, vectors FROM log WHERE seq > ? ORDER BY seq LIMIT 64", (last,))
            if not rows:
                return
            for seq, op, ids, vectors in rows:
                yield int(seq), op, np.frombuffer(ids, dtype=np.int64), (
                    None if vectors is None else np.frombuffer(vectors, dtype=np.float32))
            last = int(rows[-1][0])

    def log_bytes(self) -> int:
        row = self._q("SELECT coalesce(sum(length(ids) + coalesce(length(vectors), 0)), 0) FROM log")
        return int(row[0][0])

    def last_seq(self) -> int:
        row = self._q("SELECT max(seq) FROM log")[0][0]
        return int(self.info().get("snapshot_seq", 0)) if row is None else int(row)

    # ------------------------------------------------------------------------------------------ writes
    def add(self, seq: int, ids: np.ndarray, metas: list[dict], vectors: np.ndarray) -> None:
        """One committed transaction: the items and the log row that puts their vectors into FAISS."""
        with self._tx() as c:
            c.executemany("INSERT INTO items (id, uri, label, meta) VALUES (?, ?, ?, ?)",
                          [_meta_row(i, m) for i, m in zip(ids.tolist(), metas, strict=True)])
            c.execute("INSERT INTO log (seq, op, ids, vectors) VALUES (?, 'add', ?, ?)",
                      (seq, np.ascontiguousarray(ids, dtype=np.int64).tobytes(),
                       np.ascontiguousarray(vectors, dtype=np.float32).tobytes()))

    def all_ids(self) -> list[int]:
        return [int(r[0]) for r in self._q("SELECT id FROM items")]

    def delete_items(self, ids: list[int]) -> None:
        """Items deleted without a log row (a repair: their vectors are gone already)."""
        with self._tx() as c:
            _delete(c, ids)

    def remove(self, seq: int, ids: list[int]) -> None:
        """One committed transaction: the items go, and the log row that takes their vectors out of FAISS."""
        with self._tx() as c:
            _delete(c, ids)
            c.execute("INSERT INTO log (seq, op, ids, vectors) VALUES (?, 'remove', ?, NULL)",
                      (seq, np.asarray(ids, dtype=np.int64).tobytes()))

    def switch_snapshot(self, name: str, seq: int, info: dict | None = None) -> None:
        """The FAISS snapshot ``name`` holds every log row up to ``seq``: name it, drop those rows (one commit)."""
        with self._tx() as c:
            c.execute("DELETE FROM log WHERE seq <= ?", (seq,))
            self._put_info(c, {**(info or {}), "snapshot": name, "snapshot_seq": seq})

    def replace_all(self, items: Iterable[tuple[int, dict]], name: str, seq: int, info: dict) -> None:
        """Every item replaced by ``items`` (a rebuild or a conversion), the log emptied and the snapshot named,
        in one transaction: the old items and FAISS file stay current until it commits."""
        with self._tx() as c:
            c.execute("DELETE FROM items")
            c.execute("DELETE FROM log")
            batch: list[tuple] = []
            for i, m in items:
                batch.append(_meta_row(i, m))
                if len(batch) >= 10_000:
                    c.executemany("INSERT INTO items (id, uri, label, meta) VALUES (?, ?, ?, ?)", batch)
                    batch = []
            c.executemany("INSERT INTO items (id, uri, label, meta) VALUES (?, ?, ?, ?)", batch)
            self._put_info(c, {**info, "format": FORMAT, "snapshot": name, "snapshot_seq": seq})

    def check(self) -> list[str]:
        """``PRAGMA quick_check``: the problems SQLite finds in the file (empty when none). Reads every page."""
        rows = self._q("PRAGMA quick_check")
        return [] if [r[0] for r in rows] == ["ok"] else [r[0] for r in rows]
