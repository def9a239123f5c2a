"""DurableIndex: a VectorIndex directory that survives kill -9 and serves searches while it is written.

Layout of the directory::

    CURRENT, snap-*/   the current snapshot (``index.snapshot``; its meta records ``wal_seq``: the last logged op in it)
    wal.log            adds/removes since that snapshot, one framed record each (magic, length, crc32, payload)
    LOCK               flock: one writing process per directory

Why: an add or remove is appended to ``wal.log`` and fsynced *before* the call returns, so an acknowledged
write is on disk; ``open`` replays records newer than the snapshot's ``wal_seq`` (so a crash between a snapshot
and the log truncation replays nothing twice) and cuts a torn tail left by a crash mid-append. ``compact``
snapshots and empties the log (automatically once the log passes ``compact_bytes``; HNSW tombstones are dropped then
when they are more than 10% of the items). Threads: a writer-preferring readers-writer lock; searches run concurrently
(FAISS releases the GIL), a write waits for them and excludes them, so a search sees all of an add or none.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index import snapshot
from index.fsio import atomic_publish_dir, atomic_write_bytes, fsync_dir
from index.vector_index import Hit, IndexStoreError, VectorIndex, VersionMismatchError

log = logging.getLogger(__name__)

WAL_FILE = "wal.log"
LOCK_FILE = "LOCK"
_MAGIC = b"BWL1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(payload)
_HEAD = struct.Struct("<I")  # header json length inside the payload
DEFAULT_COMPACT_BYTES = 64 * 2**20  # log size past which a write snapshots (the write then takes longer)
TOMBSTONE_REBUILD_FRACTION = 0.1  # HNSW: rebuild without tombstones at a snapshot past this share of dead items


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


# ---------------------------------------------------------------------------------------------- log records
def encode_record(header: dict, vectors: np.ndarray | None = None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"" if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
    payload = _HEAD.pack(len(head)) + head + body
    return _FRAME.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[tuple[dict, np.ndarray | None]], int]:
    """All complete records of a log, and the byte offset where the valid part ends (a torn tail after it)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    out, pos = [], 0
    while pos + _FRAME.size <= len(data):
        magic, length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if magic != _MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        payload = data[start:end]
        (hlen,) = _HEAD.unpack_from(payload, 0)
        header = json.loads(payload[_HEAD.size:_HEAD.size + hlen])
        body = payload[_HEAD.size + hlen:]
        vectors = np.frombuffer(body, dtype=np.float32).reshape(-1, header["dim"]) if body else None
        out.append((header, vectors))
        pos = end
    if pos != len(data):
        log.warning("%s: ignoring a torn tail of %d bytes (crash during an append)", path, len(data) - pos)
    return out, pos


class DurableIndex:
    """Thread-safe, write-ahead-logged :class:`VectorIndex` living in one directory."""

    def __init__(self, directory: Path, index: VectorIndex, wal_seq: int, lock_fd: int | None) -> None:
        self.directory = directory
        self._index = index
        self._seq = wal_seq
        self._lock_fd = lock_fd
        self._rw = RWLock()
        self._wal = None if lock_fd is None else open(directory / WAL_FILE, "ab")
        self.compact_bytes = DEFAULT_COMPACT_BYTES

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
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(directory, index, wal_seq, lock_fd)

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

    # ------------------------------------------------------------------------------------------ operations
    def _append(self, header: dict, vectors: np.ndarray | None = None) -> None:
        if self._wal is None:
            raise IndexStoreError(f"index {self.directory} is open read-only")
        self._wal.write(encode_record(header, vectors))
        self._wal.flush()
        os.fsync(self._wal.fileno())

    def add(self, vectors: np.ndarray, metadata: list[dict], encoder_version: str) -> np.ndarray:
        """Log (fsync) then apply; the returned ids are durable."""
        with self._rw.write():
            x, metas = self._index.prepare_add(vectors, metadata, encoder_version)
            if not len(x):
                return np.zeros(0, dtype=np.int64)
            ids = np.arange(self._index.next_id, self._index.next_id + len(x), dtype=np.int64)
            self._append({"op": "add", "seq": self._seq + 1, "dim": self.dim, "ids": ids.tolist(), "meta": metas}, x)
            self._seq += 1
            self._index.add_prepared(x, metas, ids)
            self._maybe_compact()
            return ids

    def remove(self, ids) -> int:
        with self._rw.write():
            present = [int(i) for i in np.atleast_1d(np.asarray(ids, dtype=np.int64))
                       if int(i) in self._index.metadata]
            if not present:
                return 0
            self._append({"op": "remove", "seq": self._seq + 1, "dim": self.dim, "ids": present})
            self._seq += 1
            removed = self._index.remove(present)
            self._maybe_compact()
            return removed

    def search(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[Hit]]:
        with self._rw.read():
            return self._index.search(queries, k, encoder_version)

    def _maybe_compact(self) -> None:
        """Keep the log (replayed at every open) bounded; caller holds the write lock."""
        if self.compact_bytes and self._wal is not None and self._wal.tell() > self.compact_bytes:
            self._snapshot()

    def compact(self) -> None:
        """Snapshot everything and empty the log (the snapshot records the log position first)."""
        with self._rw.write():
            self._snapshot()

    def replace(self, index: VectorIndex) -> None:
        """Swap in a freshly built index (a rebuild), durably: snapshot it, then empty the log."""
        with self._rw.write():
            self._index = index
            self._snapshot()

    def _snapshot(self) -> None:
        if self._wal is None:
            raise IndexStoreError(f"index {self.directory} is open read-only")
        if len(self._index.tombstones) > TOMBSTONE_REBUILD_FRACTION * max(len(self._index), 1):
            log.info("dropping %d tombstones from %s before the snapshot", len(self._index.tombstones),
                     self.directory)
            self._index = self._index.without_tombstones()
        self._index.save(self.directory, extra={"wal_seq": self._seq})
        self._wal.close()
        atomic_write_bytes(self.directory / WAL_FILE, b"")
        self._wal = open(self.directory / WAL_FILE, "ab")

    def close(self) -> None:
        with self._rw.write():
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


def _replay(wal: Path, index: VectorIndex, wal_seq: int, truncate: bool) -> int:
    records, valid_end = read_records(wal)
    applied = 0
    for header, vectors in records:
        if header["seq"] <= wal_seq:
            continue  # already in the snapshot (crash between snapshot and log truncation)
        ids = np.asarray(header["ids"], dtype=np.int64)
        if header["op"] == "add":
            index.add_prepared(vectors, header["meta"], ids)
        elif header["op"] == "remove":
            index.remove(ids)
        else:
            raise IndexStoreError(f"{wal}: unknown log record {header['op']!r}")
        wal_seq = header["seq"]
        applied += 1
    if truncate and wal.is_file() and wal.stat().st_size != valid_end:
        with open(wal, "rb+") as fh:
            fh.truncate(valid_end)
            os.fsync(fh.fileno())
        fsync_dir(wal.parent)
    if applied:
        log.info("replayed %d logged operation(s) from %s", applied, wal)
    return wal_seq
