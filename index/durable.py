"""DurableIndex: a VectorIndex directory that survives kill -9 and serves searches while it is written.

Layout of the directory::

    CURRENT, snap-*/   the current snapshot (``index.snapshot``; its meta records ``wal_seq``: the last logged op in it)
    wal.log            adds/removes since that snapshot, one framed record each (``index.wal``)
    LOCK               flock: one writing process per directory

Why: an add or remove is appended to ``wal.log`` and fsynced *before* the call returns, so an acknowledged
write is on disk; a failed append is cut back out of the log (``index.wal.LogWriter``), so it never shadows a later
one. ``open`` replays records newer than the snapshot's ``wal_seq`` (so a crash between a snapshot and the log reset
replays nothing twice), cuts a torn tail left by a crash mid-append, and refuses a log damaged in the middle (the
error names the offset and :func:`repair`). ``compact`` snapshots and empties the log (automatically once the log
passes ``compact_bytes``; a failed automatic compaction is logged and never fails the write that triggered it; HNSW
tombstones are dropped then when they are more than 10% of the items). Threads: a writer-preferring readers-writer
lock; searches run concurrently (FAISS releases the GIL), a write waits for them and excludes them, so a search sees
all of an add or none. Adds can be made idempotent by URI (``dedupe=True``): an item whose URI the index holds
already gets its existing id back, so a retried upload never becomes a second item.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index import snapshot, wal
from index.fsio import atomic_publish_dir, atomic_write_bytes, fsync_dir
from index.vector_index import Hit, IndexStoreError, VectorIndex, VersionMismatchError

log = logging.getLogger(__name__)

WAL_FILE = "wal.log"
LOCK_FILE = "LOCK"
DEFAULT_COMPACT_BYTES = 64 * 2**20  # log size past which a write snapshots (the write then takes longer)
TOMBSTONE_REBUILD_FRACTION = 0.1  # HNSW: rebuild without tombstones at a snapshot past this share of dead items
encode_record, read_records = wal.encode_record, wal.read_records  # the log format lives in index.wal


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class DurableIndex:
    """Thread-safe, write-ahead-logged :class:`VectorIndex` living in one directory."""

    def __init__(self, directory: Path, index: VectorIndex, wal_seq: int, lock_fd: int | None) -> None:
        self.directory = directory
        self._index = index
        self._seq = wal_seq
        self._lock_fd = lock_fd
        self._rw = RWLock()
        self._wal = None if lock_fd is None else wal.LogWriter(directory / WAL_FILE)
        self._by_uri: dict[str, set[int]] = {}
        self._index_uris()
        self.compact_bytes = DEFAULT_COMPACT_BYTES
        self.closed = False

    def _index_uris(self) -> None:
        self._by_uri = {}
        for i, m in self._index.metadata.items():
            if m.get("uri"):
                self._by_uri.setdefault(m["uri"], set()).add(int(i))

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str | os.PathLike, *, dim: int | None = None, encoder_version: str | None = None,
             factory: str | None = None, create: bool = False, read_only: bool = False) -> DurableIndex:
        """Open (and with ``create=True`` make) an index directory, replaying its log.

        ``encoder_version`` / ``dim`` given → refuse an index built for something else. ``read_only`` takes no
        lock (a CLI search beside a running service) and refuses writes.
        """
        directory = Path(directory)
        if not snapshot.exists(directory) and not create:
            raise IndexStoreError(f"no index at {directory}")
        lock_fd = None
        if not read_only:
            directory.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_lock(directory)
        try:
            if snapshot.exists(directory):
                index, meta = VectorIndex.load_with_extra(directory)
                wal_seq = int(meta.get("wal_seq", 0))
                if encoder_version is not None and encoder_version != index.encoder_version:
                    raise VersionMismatchError(
                        f"index {directory} belongs to encoder {index.encoder_version!r}, not {encoder_version!r}"
                    )
                if dim is not None and int(dim) != index.dim:
                    raise IndexStoreError(f"index {directory} holds {index.dim}-d vectors, not {dim}-d")
            else:
                if dim is None or not encoder_version:
                    raise IndexStoreError("creating an index needs dim and encoder_version")
                index, wal_seq = VectorIndex(dim, encoder_version, factory), 0
                index.save(directory, extra={"wal_seq": 0})
            wal_seq = _replay(directory / WAL_FILE, index, wal_seq, truncate=not read_only)
            return cls(directory, index, wal_seq, lock_fd)
        except BaseException:  # the lock must not outlive a failed open (the next open would be refused)
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """Whether an index was published at ``directory`` (callers never look inside the directory)."""
        return snapshot.exists(directory)

    @classmethod
    def publish(cls, index: VectorIndex, directory: str | os.PathLike, force: bool = False) -> None:
        """Make a freshly built ``index`` the one at ``directory``: a new directory appears complete (built under
        a temporary name, renamed); an existing index is replaced durably only with ``force``."""
        directory = Path(directory)
        if not snapshot.exists(directory):
            if directory.exists():
                shutil.rmtree(directory)  # a directory without a snapshot holds no index (e.g. a bare LOCK)
            atomic_publish_dir(lambda tmp: index.save(tmp, extra={"wal_seq": 0}), directory)
            return
        if not force:
            raise IndexStoreError(
                f"an index for {index.encoder_version} already exists at {directory}; pass --force to rebuild it "
                "(items added since the last build are kept only through the collection)"
            )
        with cls.open(directory) as durable:
            durable.replace(index)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def encoder_version(self) -> str:
        return self._index.encoder_version

    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def factory(self) -> str:
        return self._index.factory

    def __len__(self) -> int:
        with self._rw.read():
            return len(self._index)

    def metadata(self, item_id: int) -> dict | None:
        with self._rw.read():
            m = self._index.metadata.get(int(item_id))
            return None if m is None else dict(m)

    def items(self) -> list[tuple[int, dict]]:
        """Every live ``(id, metadata)``: what a caller needs to reconcile this index with another record."""
        with self._rw.read():
            return [(int(i), dict(m)) for i, m in self._index.metadata.items()]

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` (exact for Flat / IVF-Flat / HNSW, approximations for PQ indexes)."""
        with self._rw.read():
            return self._index.vectors(ids)

    def ids_of(self, uris) -> list[int]:
        """The live ids holding any of ``uris`` (the stable key of an item across versions is its URI)."""
        with self._rw.read():
            return sorted({i for u in uris for i in self._by_uri.get(u, ())})

    def present_uris(self, uris) -> set[str]:
        """Which of ``uris`` the index holds."""
        with self._rw.read():
            return {u for u in uris if u in self._by_uri}

    # ------------------------------------------------------------------------------------------ operations
    def _append(self, header: dict, vectors: np.ndarray | None = None) -> None:
        if self._wal is None:
            raise IndexStoreError(f"index {self.directory} is "
                                  f"{'closed' if self.closed else 'open read-only'}: it takes no writes")
        self._wal.append(encode_record(header, vectors))

    def add(self, vectors: np.ndarray, metadata: list[dict], encoder_version: str, *,
            dedupe: bool = False) -> np.ndarray:
        """Log (fsync) then apply; the returned ids are durable. With ``dedupe`` an item whose ``uri`` is in the
        index already (or earlier in this call) is not added again: its existing id is returned in its place."""
        with self._rw.write():
            x, metas = self._index.prepare_add(vectors, metadata, encoder_version)
            ids, fresh = self._assign_ids(metas, dedupe)
            if not fresh:
                return ids
            new_ids = ids[fresh]
            new_metas = [metas[i] for i in fresh]
            self._append({"op": "add", "seq": self._seq + 1, "dim": self.dim, "ids": new_ids.tolist(),
                          "meta": new_metas}, x[fresh])
            self._seq += 1
            self._index.add_prepared(x[fresh], new_metas, new_ids)
            for i, m in zip(new_ids.tolist(), new_metas, strict=True):
                if m.get("uri"):
                    self._by_uri.setdefault(m["uri"], set()).add(int(i))
            self._maybe_compact()
            return ids

    def _assign_ids(self, metas: list[dict], dedupe: bool) -> tuple[np.ndarray, list[int]]:
        """Ids for each row (existing ones for known URIs when deduplicating) and the rows to really add."""
        ids = np.empty(len(metas), dtype=np.int64)
        fresh, pending, next_id = [], {}, self._index.next_id
        for row, m in enumerate(metas):
            uri = m.get("uri") if dedupe else None
            known = min(self._by_uri[uri]) if uri in self._by_uri else pending.get(uri)
            if uri and known is not None:
                ids[row] = known
                continue
            ids[row] = next_id
            if uri:
                pending[uri] = next_id
            fresh.append(row)
            next_id += 1
        return ids, fresh

    def remove(self, ids) -> int:
        with self._rw.write():
            present = [int(i) for i in np.atleast_1d(np.asarray(ids, dtype=np.int64))
                       if int(i) in self._index.metadata]
            if not present:
                return 0
            self._append({"op": "remove", "seq": self._seq + 1, "dim": self.dim, "ids": present})
            self._seq += 1
            for i in present:
                uri = self._index.metadata[i].get("uri")
                if uri in self._by_uri:
                    self._by_uri[uri].discard(i)
                    if not self._by_uri[uri]:
                        del self._by_uri[uri]
            removed = self._index.remove(present)
            self._maybe_compact()
            return removed

    def search(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[Hit]]:
        with self._rw.read():
            return self._index.search(queries, k, encoder_version)

    def _maybe_compact(self) -> None:
        """Keep the log (replayed at every open) bounded; caller holds the write lock. The write that got here is
        durable already, so a failing snapshot (a full disk) is logged and retried at a later write, never raised."""
        if not (self.compact_bytes and self._wal is not None and self._wal.size() > self.compact_bytes):
            return
        try:
            self._snapshot()
        except Exception as exc:
            log.warning("compacting %s failed (%s); the log keeps every write, compaction is retried later",
                        self.directory, exc)

    def compact(self) -> None:
        """Snapshot everything and empty the log (the snapshot records the log position first)."""
        with self._rw.write():
            self._snapshot()

    def replace(self, index: VectorIndex) -> None:
        """Swap in a freshly built index (a rebuild), durably: snapshot it, then empty the log."""
        with self._rw.write():
            self._index = index
            self._index_uris()
            self._snapshot()

    def _snapshot(self) -> None:
        if self._wal is None:
            raise IndexStoreError(f"index {self.directory} is open read-only")
        if len(self._index.tombstones) > TOMBSTONE_REBUILD_FRACTION * max(len(self._index), 1):
            log.info("dropping %d tombstones from %s before the snapshot", len(self._index.tombstones),
                     self.directory)
            self._index = self._index.without_tombstones()
        self._index.save(self.directory, extra={"wal_seq": self._seq})
        self._wal.reset()

    def close(self) -> None:
        """Release the log and the directory lock; searches on this object keep working, writes are refused."""
        with self._rw.write():
            self.closed = True
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> DurableIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _take_lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexStoreError(
            f"index {directory} is open for writing by another process (open it read_only to search)"
        ) from None
    return fd


def _replay(path: Path, index: VectorIndex, wal_seq: int, truncate: bool) -> int:
    s = wal.scan(path)
    if s.corrupt_at is not None:
        raise wal.corruption_error(path, s)
    applied = 0
    for header, vectors in s.records:
        if header["seq"] <= wal_seq:
            continue  # already in the snapshot (crash between snapshot and log reset)
        ids = np.asarray(header["ids"], dtype=np.int64)
        if header["op"] == "add":
            index.add_prepared(vectors, header["meta"], ids)
        elif header["op"] == "remove":
            index.remove(ids)
        else:
            raise IndexStoreError(f"{path}: unknown log record {header['op']!r}")
        wal_seq = header["seq"]
        applied += 1
    if s.valid_end != s.size:
        log.warning("%s: %s a torn tail of %d bytes (crash during an append)", path,
                    "cutting" if truncate else "ignoring", s.size - s.valid_end)
        if truncate:
            with open(path, "rb+") as fh:
                fh.truncate(s.valid_end)
                os.fsync(fh.fileno())
            fsync_dir(path.parent)
    if applied:
        log.info("replayed %d logged operation(s) from %s", applied, path)
    return wal_seq


def repair(directory: str | os.PathLike) -> dict:
    """Make a log damaged in the middle usable again: keep every intact record (in order), drop the bad bytes.

    Takes the directory's writer lock (stop the server first). Returns ``{"kept", "dropped_ranges",
    "dropped_bytes"}``. What a dropped record held is still in the collection (it is written first), so the next
    reconcile (``/admin/reload`` of another version, or a rebuild) brings those items back.
    """
    directory = Path(directory)
    path = directory / WAL_FILE
    lock_fd = _take_lock(directory)
    try:
        kept, dropped = wal.intact_frames(path)
        if dropped:
            atomic_write_bytes(path, kept)
            log.warning("%s: repaired, dropped bytes %s", path, dropped)
        return {"kept": len(wal.scan(path).records), "dropped_ranges": dropped,
                "dropped_bytes": sum(b - a for a, b in dropped)}
    finally:
        os.close(lock_fd)
