"""VectorIndex: FAISS search over unit vectors with stable int64 ids, metadata, and its encoder version.

Why the pieces are as they are:
  * cosine similarity = inner product on L2-normalised vectors (inputs are normalised again here: cheap, safe);
  * ids are stable int64s across removes and saves: Flat/HNSW are wrapped in ``IDMap`` (the id of each position;
    not ``IDMap2``, whose id → position hash map costs ~50 MB per million items: a stored vector is found by a
    binary search of the ids, which stay ascending), IVF stores the ids itself (with a hash direct map for
    remove/reconstruct: an id map around IVF mis-maps ids after a remove);
  * HNSW cannot ``remove_ids``: removed ids become *tombstones* filtered at search time with over-fetch
    (k + #tombstones), persisted with the index; ``without_tombstones()`` drops them for good;
  * an index belongs to exactly one encoder version: vectors or queries tagged with another are refused;
  * the metadata of an in-memory index (a build, a test) is a dict here; an index opened from a directory keeps
    none (``metadata is None``): its items live in the directory's item store (``index.item_store``), read by id
    when a search needs them, so memory holds the vectors and little else;
  * ``save`` writes a new FAISS snapshot and names it in the directory's item store together with the items, in
    one commit, so a crash leaves the previous index readable; nprobe / efSearch are stored and set again after
    ``read_index``;
  * ``build`` tunes nprobe / efSearch to a recall target on held-out queries (``index.tuning``, kept in meta.json);
  * a large snapshot is memory-mapped on load (``index.snapshot.read_index``); FAISS aborts on a write to a mapped
    index, so the first write reads it into memory (``_writable``);
  * FAISS GPU searches when ``faiss.get_num_gpus() > 0`` (Flat / IVF); the CPU index stays the source of truth.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from index import tuning
from index.chooser import choose_index, default_nprobe, parse_factory
from index.errors import IndexStoreError, VersionMismatchError
from index.fsio import now_iso
from index.snapshot import load_index, read_index, save_index

log = logging.getLogger(__name__)
__all__ = ["Hit", "IndexStoreError", "VectorIndex", "VersionMismatchError", "normalize", "set_omp_threads"]

DEFAULT_EF_SEARCH = 128
EF_SEARCH_RANGE = (16, 4096)  # efSearch values tuning may choose from (HNSW32 needed 2048 on the hard 1M mixture)
ADD_CHUNK = 100_000
# FAISS 1.15 scans a batch query by query (each one streaming every vector) unless queries × dim >= 128,000; from 4
# queries on, one BLAS pass is faster (120k×128, 1 thread: 64 queries 2,740 QPS vs 376): exact and IVF's coarse step
BLAS_MIN_QUERIES = 4
TRAIN_POINTS_PER_LIST = 64  # k-means sample per IVF list: FAISS wants >= 39, more mostly costs time


@dataclass
class Hit:
    id: int
    score: float
    metadata: dict = field(default_factory=dict)


def _faiss():
    import faiss

    return faiss


def set_omp_threads(n: int) -> None:
    """FAISS's OpenMP threads for this process (global). Why: on a busy CPU box, threads spinning for a core another
    process holds make searches up to ~30x slower (single queries, Flat 10k×256: 1,205 QPS with 1 thread vs 43; batched
    100k×256: 2,600 vs 630); a service searching from several request threads wants 1 (it calls this at start-up)."""
    _faiss().omp_set_num_threads(max(1, int(n)))


def gpu_count() -> int:
    return int(getattr(_faiss(), "get_num_gpus", lambda: 0)())  # CPU-only builds may lack the symbol


def normalize(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """Validate ``[N, dim]`` finite floats and return an L2-normalised float32 copy."""
    x = np.asarray(vectors)
    if x.ndim == 1 and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise IndexStoreError(f"{what} must have shape [N, {dim}], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise IndexStoreError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise IndexStoreError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) and float(norms.min()) < 1e-12:
        raise IndexStoreError(f"{what} contain an all-zero row (no direction to compare)")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


class VectorIndex:
    """Not thread-safe by itself; :class:`index.durable.DurableIndex` adds locking and a write-ahead log."""

    def __init__(self, dim: int, encoder_version: str, factory: str | None = None) -> None:
        if int(dim) <= 0:
            raise IndexStoreError(f"dim must be positive, got {dim}")
        if not encoder_version:
            raise IndexStoreError("an index needs the encoder version it belongs to")
        self.dim = int(dim)
        self.encoder_version = str(encoder_version)
        self.factory = factory if factory and factory != "auto" else choose_index(0, self.dim)[0]
        self.spec = parse_factory(self.factory)
        faiss = _faiss()
        try:
            if self.spec.kind == "IVF":  # IVF keeps ids itself; a hash direct map gives remove + reconstruct
                self._index = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
                faiss.extract_index_ivf(self._index).set_direct_map_type(faiss.DirectMap.Hashtable)
            else:
                self._index = faiss.index_factory(self.dim, f"IDMap,{self.factory}", faiss.METRIC_INNER_PRODUCT)
        except Exception as exc:
            raise IndexStoreError(f"FAISS cannot build {self.factory!r}: {str(exc).splitlines()[0]}") from None
        self.nprobe = default_nprobe(self.spec.nlist) if self.spec.kind == "IVF" else 0
        self.ef_search = DEFAULT_EF_SEARCH if self.spec.kind == "HNSW" else 0
        self.metadata: dict[int, dict] | None = {}  # None: the items live in an item store (index.durable)
        self.tombstones: set[int] = set()
        self.next_id = 0
        self.tuning: dict | None = None  # how nprobe / efSearch were chosen (index.tuning.TuningResult)
        self._runtime(None)

    def _runtime(self, mapped_from: str | None) -> None:
        self._mapped_from = mapped_from  # the file a memory-mapped index reads, None when in memory
        self._gpu = None  # (resources, gpu index) cache, dropped on every change
        self._order = None  # the sort order of an IDMap's ids (False: ascending already), dropped on every change
        self._gpu_lock = threading.Lock()  # concurrent searches (DurableIndex readers) build it once
        self._apply_search_params()  # read_index forgets nprobe / efSearch

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        if self.metadata is None:
            return self.ntotal - len(self.tombstones)
        return len(self.metadata)

    @property
    def ntotal(self) -> int:  # vectors held by FAISS (tombstoned HNSW entries included)
        return int(self._index.ntotal)

    def _check_version(self, encoder_version: str, what: str) -> None:
        if encoder_version != self.encoder_version:
            raise VersionMismatchError(
                f"{what} come from encoder {encoder_version!r} but this index belongs to encoder "
                f"{self.encoder_version!r}; rebuild the index for the new encoder (byol index build)"
            )

    @property
    def mmapped(self) -> bool:  # FAISS data read from a memory-mapped snapshot file (until the first write)
        return self._mapped_from is not None

    def _writable(self) -> None:
        """Read a memory-mapped index into memory before changing it: FAISS aborts on writes to a mapping."""
        if self._mapped_from is None:
            return
        faiss, path = _faiss(), self._mapped_from
        t0 = time.perf_counter()
        self._index = read_index(path, mmap=False)[0] if os.path.exists(path) else faiss.deserialize_index(
            faiss.serialize_index(self._index))  # the snapshot was replaced since: copy what is mapped
        self._runtime(None)
        log.info("read memory-mapped %s into memory for a write in %.1f s", path, time.perf_counter() - t0)

    @property
    def _id_mapped(self) -> bool:
        """Flat/HNSW sit in an IDMap (their own ids are positions); IVF stores our ids natively. Why not an IDMap
        around IVF too: its remove_ids compacts the id table while IVF keeps old positions (ids then mis-map)."""
        return self.spec.kind != "IVF"

    def _inner(self):
        return _faiss().downcast_index(self._index.index if self._id_mapped else self._index)

    def _apply_search_params(self) -> None:
        inner = self._inner()
        if self.spec.kind == "IVF" and self.nprobe:
            inner.nprobe = int(self.nprobe)
        if self.spec.kind == "HNSW" and self.ef_search:
            inner.hnsw.efSearch = int(self.ef_search)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade recall for speed; stored with the index so a reload searches the same way."""
        if nprobe is not None:
            self.nprobe = int(nprobe)
        if ef_search is not None:
            self.ef_search = int(ef_search)
        self._apply_search_params()
        self._gpu = self._order = None

    # ------------------------------------------------------------------------------------------ writes
    def prepare_add(self, vectors: np.ndarray, metadata: list[dict], encoder_version: str
                    ) -> tuple[np.ndarray, list[dict]]:
        """Validate an add without changing anything: normalised vectors and completed metadata (split from
        :meth:`add` so the durable index can log exactly what it will apply)."""
        self._check_version(encoder_version, "vectors")
        x = normalize(vectors, self.dim)
        if len(metadata) != len(x):
            raise IndexStoreError(f"{len(x)} vectors but {len(metadata)} metadata entries")
        stamp = now_iso()
        metas = []
        for i, m in enumerate(metadata):
            if not isinstance(m, dict):
                raise IndexStoreError(f"metadata #{i} must be a dict, got {type(m).__name__}")
            m = {"added_at": stamp, **m}
            try:
                json.dumps(m)
            except (TypeError, ValueError) as exc:
                raise IndexStoreError(f"metadata #{i} is not JSON-serialisable: {exc}") from None
            metas.append(m)
        if self.spec.kind == "IVF" and not self._index.is_trained and len(x) < self.spec.nlist:
            raise IndexStoreError(
                f"{self.factory} needs at least {self.spec.nlist} vectors in its first add to train, got {len(x)}"
            )
        return x, metas

    def add_prepared(self, x: np.ndarray, metas: list[dict], ids: np.ndarray) -> None:
        """Apply a validated add with given ids (also used to replay the write-ahead log)."""
        if len(x) == 0:
            return
        self._writable()
        if not self._index.is_trained:
            self._train(x)
        self._index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
        if self.metadata is not None:
            for i, m in zip(ids.tolist(), metas, strict=True):
                self.metadata[int(i)] = m
        self.next_id = max(self.next_id, int(ids.max()) + 1)
        self._gpu = self._order = None

    def _train(self, x: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Train (IVF k-means) on a seeded sample of ``x`` (of its ``rows`` when given)."""
        rows = np.arange(len(x)) if rows is None else rows
        cap = TRAIN_POINTS_PER_LIST * max(self.spec.nlist, 1)
        sample = x[rows if len(rows) <= cap else np.sort(np.random.default_rng(0).choice(rows, cap, replace=False))]
        t0 = time.perf_counter()
        self._index.train(sample)
        log.info("trained %s on %d vectors in %.1f s", self.factory, len(sample), time.perf_counter() - t0)

    def add(self, vectors: np.ndarray, metadata: list[dict], encoder_version: str) -> np.ndarray:
        """Add unit-normalised copies of ``vectors``; returns their new int64 ids."""
        x, metas = self.prepare_add(vectors, metadata, encoder_version)
        ids = np.arange(self.next_id, self.next_id + len(x), dtype=np.int64)
        self.add_prepared(x, metas, ids)
        return ids

    def remove(self, ids) -> int:
        """Remove ids (unknown ids are ignored; without a metadata dict the caller passes present ids only);
        returns how many were present."""
        wanted = [int(i) for i in np.atleast_1d(np.asarray(ids, dtype=np.int64))
                  if self.metadata is None or int(i) in self.metadata]
        if not wanted:
            return 0
        self._writable()
        if self.spec.kind == "HNSW":
            self.tombstones.update(wanted)
        else:
            arr = np.asarray(wanted, dtype=np.int64)
            faiss = _faiss()
            selector = faiss.IDSelectorBatch if self._id_mapped else faiss.IDSelectorArray  # hash map needs Array
            self._index.remove_ids(selector(len(arr), faiss.swig_ptr(arr)))
        if self.metadata is not None:
            for i in wanted:
                del self.metadata[i]
        self._gpu = self._order = None
        return len(wanted)

    # ------------------------------------------------------------------------------------------ search
    def _searcher(self):
        """The GPU copy of the inner index when a GPU is present (Flat/IVF), else None (built once, kept)."""
        with self._gpu_lock:
            if self._gpu is None:
                self._gpu = False
                if gpu_count() > 0 and self.spec.kind != "HNSW" and self._index.ntotal:
                    faiss = _faiss()
                    try:
                        res = faiss.StandardGpuResources()
                        self._gpu = res, faiss.index_cpu_to_gpu(res, 0, self._inner())
                    except Exception as exc:  # unsupported type or out of GPU memory: CPU still answers
                        log.warning("FAISS GPU unavailable for %s, searching on CPU: %s", self.factory, exc)
        return self._gpu or None

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _faiss().cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES * self.dim  # global: cheap, idempotent
        gpu = self._searcher()
        if gpu is None:
            return self._index.search(q, k)
        scores, pos = gpu[1].search(q, k)
        if self._id_mapped:
            id_map = _faiss().vector_to_array(self._index.id_map)
            pos = np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)
        return scores, pos

    def search_ids(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[tuple[int, float]]]:
        """``(id, score)`` of the ``k`` most cosine-similar items per query, best first (fewer when the index is
        smaller); tombstones skipped."""
        self._check_version(encoder_version, "queries")
        q = normalize(queries, self.dim, "queries")
        if int(k) < 1:
            raise IndexStoreError(f"k must be >= 1, got {k}")
        k = int(k)
        if not len(self) or len(q) == 0:
            return [[] for _ in range(len(q))]
        fetch = min(k + len(self.tombstones), self.ntotal)
        scores, ids = self._raw_search(q, fetch)
        out: list[list[tuple[int, float]]] = []
        dead = self.tombstones
        for srow, irow in zip(scores.tolist(), ids.tolist(), strict=True):
            live = ((i, s) for s, i in zip(srow, irow, strict=True) if i >= 0 and i not in dead)
            out.append(list(islice(live, k)))  # stop at k: the over-fetch for tombstones is not built
        return out

    def search(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[Hit]]:
        """The ``k`` most cosine-similar items per query with their metadata (an in-memory index; a directory's
        index answers through :meth:`index.durable.DurableIndex.search`)."""
        meta = self.metadata or {}
        return [[Hit(i, s, dict(meta[i])) for i, s in row if i in meta]
                for row in self.search_ids(queries, k, encoder_version)]

    def live_ids(self) -> np.ndarray:
        """Every id FAISS holds that is not a tombstone, ascending."""
        if self.metadata is not None:
            return np.array(sorted(self.metadata), dtype=np.int64)
        faiss = _faiss()
        if self._id_mapped:
            held = faiss.vector_to_array(self._index.id_map)
        else:
            inv = faiss.extract_index_ivf(self._index).invlists
            held = np.concatenate([faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                                   for lst in range(inv.nlist)] or [np.zeros(0, np.int64)])
        dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
        return np.setdiff1d(held.astype(np.int64), dead)

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` (exact for Flat/IVF-Flat/HNSW, approximate for PQ)."""
        arr = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(arr):
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._id_mapped or isinstance(self._index, _faiss().IndexIDMap2):  # IVF; IDMap2 of older stores
            return self._index.reconstruct_batch(arr)
        return self._inner().reconstruct_batch(self._positions(arr))

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in an ``IDMap`` (a binary search: ids are added ascending and removes keep the
        order; an index whose ids are not ascending — a tuned build adds its held-out rows last — is searched
        through a sorted order computed once per change)."""
        faiss = _faiss()
        held = faiss.rev_swig_ptr(self._index.id_map.data(), self._index.id_map.size())
        if self._order is None:
            self._order = False if bool(np.all(held[1:] > held[:-1])) else np.argsort(held, kind="stable")
        order = self._order
        keys = held if order is False else held[order]
        at = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
        if not len(keys) or not np.array_equal(keys[at], ids):
            missing = ids[keys[at] != ids] if len(keys) else ids
            raise IndexStoreError(f"no vector with id {int(missing[0])} in the index")
        return (at if order is False else order[at]).astype(np.int64)

    def without_tombstones(self) -> VectorIndex:
        """A copy holding only live items (same ids, metadata, parameters): HNSW's way to really remove."""
        ids = self.live_ids()
        fresh = VectorIndex(self.dim, self.encoder_version, self.factory)
        fresh.metadata = None if self.metadata is None else {}
        fresh.nprobe, fresh.ef_search, fresh.tuning = self.nprobe, self.ef_search, self.tuning
        fresh._apply_search_params()
        for lo in range(0, len(ids), ADD_CHUNK):
            part = ids[lo:lo + ADD_CHUNK]
            metas = None if self.metadata is None else [self.metadata[int(i)] for i in part]
            fresh.add_prepared(self.vectors(part), metas, part)
        fresh.next_id = self.next_id
        return fresh

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Write this in-memory index as the index of ``directory`` (``index.snapshot.save_index``)."""
        save_index(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool | None = None) -> VectorIndex:
        """The index saved at ``directory``, its metadata in memory (``index.snapshot.load_index``)."""
        return load_index(directory, mmap)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, metadata: list[dict] | None, encoder_version: str,
              factory: str | None = "auto", memory_budget_bytes: int | None = None,
              recall_target: float | None = tuning.DEFAULT_RECALL_TARGET) -> VectorIndex:
        """One-shot build (``index.building.build``)."""
        from index.building import build

        return build(cls, vectors, metadata, encoder_version, factory, memory_budget_bytes, recall_target)
