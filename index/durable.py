"""DurableIndex: a VectorIndex directory that survives kill -9 and serves searches while it is written.

Layout of the directory::

    store.db   the item store (``index.item_store``, SQLite): items, the log of writes since the FAISS snapshot
               (vectors as float32 BLOBs), the name of the current snapshot
    snap-*/    the current FAISS snapshot (``index.snapshot``): vectors and ids only
    LOCK       flock: one writing process per directory

Why: an add or remove is one SQLite transaction — the items and the log row with their vectors — committed
(fsynced) *before* the call returns, so an acknowledged write is on disk, and a failed one left nothing (SQLite rolls
it back; a full or failing disk surfaces as ``OSError``). ``open`` loads the snapshot and replays the log rows it does
not hold. ``compact`` writes a FAISS snapshot and drops the log rows it holds, in the commit that names it
(automatically once the log passes ``compact_bytes``; a failed automatic compaction is logged and never fails the
write that triggered it; HNSW tombstones are dropped then when they are more than 10% of the items): it writes the
vectors, never every item again. Memory: FAISS and nothing per item — a search reads the metadata of its hits by id in
one query, a deduplicating add looks URIs up in the store's index. Threads: a writer-preferring readers-writer lock;
searches run concurrently (FAISS releases the GIL), a write waits for them and excludes them, so a search sees all of
an add or none. Adds can be made idempotent by URI (``dedupe=True``): an item whose URI the index holds already gets
its existing id back, so a retried upload never becomes a second item. A directory in the layout before the item
store is converted on first open (``index.legacy``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from index import db, legacy
from index.fsio import atomic_publish_dir
from index.item_store import REPAIR, STORE_FILE, ItemStore
from index.rwlock import RWLock
from index.snapshot import drop_others, index_items, open_index, save_index, snapshot_index, store_info
from index.vector_index import Hit, IndexStoreError, VectorIndex, VersionMismatchError

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"
DEFAULT_COMPACT_BYTES = 64 * 2**20  # log size past which a write snapshots (the write then takes longer)
TOMBSTONE_REBUILD_FRACTION = 0.1  # HNSW: rebuild without tombstones at a snapshot past this share of dead items


class IndexLockedError(IndexStoreError):
    """Another process holds the directory's writer lock (a running server)."""


class DurableIndex:
    """Thread-safe :class:`VectorIndex` living in one directory, its items and write log in an item store."""

    def __init__(self, directory: Path, index: VectorIndex, store: ItemStore, seq: int, lock_fd: int | None) -> None:
        self.directory = directory
        self._index = index
        self._store = store
        self._seq = seq
        self._lock_fd = lock_fd
        self._rw = RWLock()
        self._log_bytes = store.log_bytes()
        self.compact_bytes = DEFAULT_COMPACT_BYTES
        self.closed = False

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str | os.PathLike, *, dim: int | None = None, encoder_version: str | None = None,
             factory: str | None = None, create: bool = False, read_only: bool = False) -> DurableIndex:
        """Open (and with ``create=True`` make) an index directory, replaying its log.

        ``encoder_version`` / ``dim`` given → refuse an index built for something else. ``read_only`` takes no
        lock (a CLI search beside a running service) and refuses writes. A directory in the layout before the
        item store is converted first (under the writer lock, also for a read-only open).
        """
        directory = Path(directory)
        if not cls.exists(directory) and not create:
            if any(directory.glob("snap-*")):
                raise IndexStoreError(f"no index at {directory}: {directory / STORE_FILE} is missing beside its "
                                      f"snapshots; {REPAIR.format(version=encoder_version or directory.name)}")
            raise IndexStoreError(f"no index at {directory}")
        if legacy.is_old_index(directory):
            fd = _take_lock(directory)
            try:
                if legacy.is_old_index(directory):  # another process may have converted it meanwhile
                    legacy.convert_index(directory)
            finally:
                os.close(fd)
        lock_fd = None
        if not read_only:
            directory.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_lock(directory)
        store = None
        try:
            if not (directory / STORE_FILE).is_file():
                if dim is None or not encoder_version:
                    raise IndexStoreError("creating an index needs dim and encoder_version")
                VectorIndex(dim, encoder_version, factory).save(directory)
            if not read_only:
                legacy.tidy_index(directory)
            store = ItemStore(directory, read_only=read_only, version=encoder_version or directory.name)
            index, seq = _load(directory, store, read_only)
            if encoder_version is not None and encoder_version != index.encoder_version:
                raise VersionMismatchError(
                    f"index {directory} belongs to encoder {index.encoder_version!r}, not {encoder_version!r}"
                )
            if dim is not None and int(dim) != index.dim:
                raise IndexStoreError(f"index {directory} holds {index.dim}-d vectors, not {dim}-d")
            return cls(directory, index, store, seq, lock_fd)
        except BaseException:  # the lock must not outlive a failed open (the next open would be refused)
            if store is not None:
                store.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """Whether an index was published at ``directory`` (callers never look inside the directory): its item
        store is the commit point (snapshots without one are a creation that never finished, or a lost store —
        :meth:`open` says which file is missing)."""
        directory = Path(directory)
        return ((directory / STORE_FILE).is_file() or (directory / legacy.CURRENT).is_file()
                or (directory / (STORE_FILE + db.DAMAGED_SUFFIX)).is_file())

    @classmethod
    def publish(cls, index: VectorIndex, directory: str | os.PathLike, force: bool = False, items=None) -> None:
        """Make a freshly built ``index`` the one at ``directory``: a new directory appears complete (built under
        a temporary name, renamed); an existing index is replaced durably only with ``force``. ``items``: a callable
        giving ``(id, metadata)`` by id, for an index built without metadata (``index.snapshot.index_items``)."""
        directory = Path(directory)
        if not cls.exists(directory):
            if directory.exists():
                shutil.rmtree(directory)  # a directory without a store holds no index (e.g. a bare LOCK)
            atomic_publish_dir(lambda tmp: save_index(index, tmp, items), directory)
            return
        if not force:
            raise IndexStoreError(
                f"an index for {index.encoder_version} already exists at {directory}; pass --force to rebuild it "
                "(items added since the last build are kept only through the collection)"
            )
        try:
            durable = cls.open(directory)
        except IndexLockedError:
            raise  # a server holds it: never pulled from under it
        except IndexStoreError as exc:  # a lost or damaged store: --force rebuilds the directory from scratch
            log.warning("%s cannot be opened (%s); --force replaces it whole", directory, exc)
            shutil.rmtree(directory)
            atomic_publish_dir(lambda tmp: save_index(index, tmp, items), directory)
            return
        with durable:
            durable.replace(index, items)

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
            return self._store.metadata([int(item_id)]).get(int(item_id))

    def items(self) -> list[tuple[int, dict]]:
        """Every live ``(id, metadata)`` (a list of all of them: for exports and tools, not for serving)."""
        with self._rw.read():
            return list(self._store.iter_items())

    def uri_batches(self, batch: int = 10_000):
        """``(id, uri)`` of the items, a batch at a time (each batch read under the lock, memory flat)."""
        last = -1
        while True:
            with self._rw.read():
                rows = self._store.uris_after(last, batch)
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` (exact for Flat / IVF-Flat / HNSW, approximations for PQ indexes)."""
        with self._rw.read():
            return self._index.vectors(ids)

    def ids_of(self, uris) -> list[int]:
        """The live ids holding any of ``uris`` (the stable key of an item across versions is its URI)."""
        with self._rw.read():
            return sorted({i for ids in self._store.ids_by_uri(uris).values() for i in ids})

    def present_uris(self, uris) -> set[str]:
        """Which of ``uris`` the index holds."""
        with self._rw.read():
            return set(self._store.ids_by_uri(uris))

    # ------------------------------------------------------------------------------------------ operations
    def _writable(self) -> None:
        if self._lock_fd is None:
            raise IndexStoreError(f"index {self.directory} is "
                                  f"{'closed' if self.closed else 'open read-only'}: it takes no writes")

    def add(self, vectors: np.ndarray, metadata: list[dict], encoder_version: str, *,
            dedupe: bool = False) -> np.ndarray:
        """Commit (fsync) then apply; the returned ids are durable. With ``dedupe`` an item whose ``uri`` is in
        the index already (or earlier in this call) is not added again: its existing id is returned in its place."""
        with self._rw.write():
            self._writable()
            x, metas = self._index.prepare_add(vectors, metadata, encoder_version)
            ids, fresh = self._assign_ids(metas, dedupe)
            if not fresh:
                return ids
            new_ids = ids[fresh]
            new_metas = [metas[i] for i in fresh]
            self._store.add(self._seq + 1, new_ids, new_metas, x[fresh])
            self._seq += 1
            self._log_bytes += len(fresh) * (8 + 4 * self.dim)
            self._index.add_prepared(x[fresh], new_metas, new_ids)
            self._maybe_compact()
            return ids

    def _assign_ids(self, metas: list[dict], dedupe: bool) -> tuple[np.ndarray, list[int]]:
        """Ids for each row (existing ones for known URIs when deduplicating) and the rows to really add."""
        ids = np.empty(len(metas), dtype=np.int64)
        known = self._store.ids_by_uri(m.get("uri") for m in metas) if dedupe else {}
        fresh, pending, next_id = [], {}, self._index.next_id
        for row, m in enumerate(metas):
            uri = m.get("uri") if dedupe else None
            have = known[uri][0] if uri in known else pending.get(uri)
            if uri and have is not None:
                ids[row] = have
                continue
            ids[row] = next_id
            if uri:
                pending[uri] = next_id
            fresh.append(row)
            next_id += 1
        return ids, fresh

    def remove(self, ids) -> int:
        with self._rw.write():
            self._writable()
            present = self._store.present(np.atleast_1d(np.asarray(ids, dtype=np.int64)).tolist())
            if not present:
                return 0
            self._store.remove(self._seq + 1, present)
            self._seq += 1
            self._log_bytes += 8 * len(present)
            removed = self._index.remove(present)
            self._maybe_compact()
            return removed

    def search(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[Hit]]:
        """The ``k`` nearest items per query with their metadata: FAISS, then one read of the hits' items."""
        with self._rw.read():
            rows = self._index.search_ids(queries, k, encoder_version)
            meta = self._store.metadata(i for row in rows for i, _ in row)
        return [[Hit(i, s, meta[i]) for i, s in row if i in meta] for row in rows]

    def _maybe_compact(self) -> None:
        """Keep the log (replayed at every open) bounded; caller holds the write lock. The write that got here is
        durable already, so a failing snapshot (a full disk) is logged and retried at a later write, never raised."""
        if not (self.compact_bytes and self._log_bytes > self.compact_bytes):
            return
        try:
            self._snapshot()
        except Exception as exc:
            log.warning("compacting %s failed (%s); the log keeps every write, compaction is retried later",
                        self.directory, exc)

    def compact(self) -> None:
        """Snapshot the vectors and drop the log rows the snapshot holds."""
        with self._rw.write():
            self._writable()
            self._snapshot()

    def replace(self, index: VectorIndex, items=None) -> None:
        """Swap in a freshly built index (a rebuild), durably: its snapshot and items (its metadata, or ``items()``)
        in one commit."""
        with self._rw.write():
            self._writable()
            rows = index_items(index, items)
            name = snapshot_index(index, self.directory, {"log_seq": self._seq})
            self._store.replace_all(rows, name, self._seq, store_info(index))
            drop_others(self.directory, name)
            index.metadata = None  # its items live in the store from now on
            self._index = index
            self._log_bytes = 0

    def _snapshot(self) -> None:
        if len(self._index.tombstones) > TOMBSTONE_REBUILD_FRACTION * max(len(self._index), 1):
            log.info("dropping %d tombstones from %s before the snapshot", len(self._index.tombstones),
                     self.directory)
            self._index = self._index.without_tombstones()
        name = snapshot_index(self._index, self.directory, {"log_seq": self._seq})
        self._store.switch_snapshot(name, self._seq)
        drop_others(self.directory, name)
        self._log_bytes = 0
        try:
            self._store.checkpoint()  # the database file takes the WAL back: the next writes start a short one
        except OSError as exc:
            log.warning("checkpointing %s failed (%s); retried at the next compaction", self.directory, exc)

    def close(self) -> None:
        """Release the directory lock and refuse writes; searches on this object keep working (calls that still
        hold it finish on it), and the store's connection closes with the object."""
        with self._rw.write():
            self.closed = True
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> DurableIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load(directory: Path, store: ItemStore, read_only: bool, tries: int = 3) -> tuple[VectorIndex, int]:
    """The current snapshot with the log replayed into it → ``(index, last sequence number)``, read as one state of
    the store. A read-only open beside a writer may find the snapshot it was told of replaced meanwhile (a
    compaction deletes the old one after its commit): it reads the store again."""
    for attempt in range(tries):
        try:
            with store.consistent():
                return _load_once(directory, store, read_only)
        except IndexStoreError:
            if not read_only or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _load_once(directory: Path, store: ItemStore, read_only: bool) -> tuple[VectorIndex, int]:
    info = store.info()
    name = info.get("snapshot")
    if not name or not (directory / name).is_dir():
        raise IndexStoreError(f"index {directory}: its item store names snapshot {name!r}, which is missing; "
                              f"{store.recovery}")
    index, _ = open_index(directory / name)
    if not read_only:
        drop_others(directory, name)  # a snapshot a crash left before the store named it
    seq, applied, top = int(info.get("snapshot_seq", 0)), 0, -1
    for row_seq, op, ids, vectors in store.log(after=seq):
        if op == "add":
            index.add_prepared(vectors.reshape(-1, index.dim), None, ids)
            top = max(top, int(ids.max()))
        elif op == "remove":
            index.remove(ids)
        else:
            raise IndexStoreError(f"{store.path}: unknown log row {op!r} at seq {row_seq}")
        seq, applied = row_seq, applied + 1
    if applied:
        log.info("replayed %d logged write(s) from %s", applied, store.path)
    index.next_id = max(index.next_id, top + 1, store.max_id() + 1)
    count = store.count()
    if count != len(index):
        raise IndexStoreError(f"index {directory}: {len(index)} vectors but {count} items in {store.path.name}; "
                              f"{store.recovery}")
    return index, seq


def _take_lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexLockedError(
            f"index {directory} is open for writing by another process (open it read_only to search)"
        ) from None
    return fd
