"""VectorIndex: FAISS search over unit vectors with stable int64 ids, metadata, and its encoder version.

Why the pieces are as they are:
  * cosine similarity = inner product on L2-normalised vectors (inputs are normalised again here: cheap, safe);
  * ids are stable int64s across removes and saves: Flat/HNSW are wrapped in ``IDMap2``, IVF stores the ids
    itself (with a hash direct map for remove/reconstruct: IDMap2 around IVF mis-maps ids after a remove);
  * HNSW cannot ``remove_ids``: removed ids become *tombstones* filtered at search time with over-fetch
    (k + #tombstones), persisted with the index; ``without_tombstones()`` drops them for good;
  * an index belongs to exactly one encoder version: vectors or queries tagged with another are refused;
  * ``save`` writes a new snapshot directory and then atomically switches a ``CURRENT`` pointer, so a crash
    leaves the previous index readable; nprobe / efSearch are stored and set again after ``read_index``;
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
from index.chooser import DEFAULT_MEMORY_BUDGET, choose_index, default_nprobe, parse_factory
from index.errors import IndexStoreError, VersionMismatchError
from index.fsio import now_iso
from index.snapshot import load_snapshot, read_index, save_snapshot

log = logging.getLogger(__name__)
__all__ = ["Hit", "IndexStoreError", "VectorIndex", "VersionMismatchError", "normalize", "set_omp_threads"]

FORMAT_VERSION = 1
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
                self._index = faiss.index_factory(self.dim, f"IDMap2,{self.factory}", faiss.METRIC_INNER_PRODUCT)
        except Exception as exc:
            raise IndexStoreError(f"FAISS cannot build {self.factory!r}: {str(exc).splitlines()[0]}") from None
        self.nprobe = default_nprobe(self.spec.nlist) if self.spec.kind == "IVF" else 0
        self.ef_search = DEFAULT_EF_SEARCH if self.spec.kind == "HNSW" else 0
        self.metadata: dict[int, dict] = {}
        self.tombstones: set[int] = set()
        self.next_id = 0
        self.tuning: dict | None = None  # how nprobe / efSearch were chosen (index.tuning.TuningResult)
        self._runtime(None)

    def _runtime(self, mapped_from: str | None) -> None:
        self._mapped_from = mapped_from  # the file a memory-mapped index reads, None when in memory
        self._gpu = None  # (resources, gpu index) cache, dropped on every change
        self._gpu_lock = threading.Lock()  # concurrent searches (DurableIndex readers) build it once
        self._apply_search_params()  # read_index forgets nprobe / efSearch

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
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
        """Flat/HNSW sit in an IDMap2 (their own ids are positions); IVF stores our ids natively. Why not IDMap2
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
        self._gpu = None

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
        for i, m in zip(ids.tolist(), metas, strict=True):
            self.metadata[int(i)] = m
        self.next_id = max(self.next_id, int(ids.max()) + 1)
        self._gpu = None

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
        """Remove ids (unknown ids are ignored); returns how many were present."""
        wanted = [int(i) for i in np.atleast_1d(np.asarray(ids, dtype=np.int64)) if int(i) in self.metadata]
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
        for i in wanted:
            del self.metadata[i]
        self._gpu = None
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

    def search(self, queries: np.ndarray, k: int, encoder_version: str) -> list[list[Hit]]:
        """The ``k`` most cosine-similar items per query, best first (fewer when the index is smaller)."""
        self._check_version(encoder_version, "queries")
        q = normalize(queries, self.dim, "queries")
        if int(k) < 1:
            raise IndexStoreError(f"k must be >= 1, got {k}")
        k = int(k)
        if not self.metadata or len(q) == 0:
            return [[] for _ in range(len(q))]
        fetch = min(k + len(self.tombstones), self.ntotal)
        scores, ids = self._raw_search(q, fetch)
        out: list[list[Hit]] = []
        meta, dead = self.metadata, self.tombstones
        for srow, irow in zip(scores.tolist(), ids.tolist(), strict=True):
            live = (Hit(i, s, dict(meta[i])) for s, i in zip(srow, irow, strict=True)
                    if i >= 0 and i not in dead and i in meta)
            out.append(list(islice(live, k)))  # stop at k: the over-fetch for tombstones is not built
        return out

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` (exact for Flat/IVF-Flat/HNSW, approximate for PQ)."""
        arr = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(arr):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(arr)

    def without_tombstones(self) -> VectorIndex:
        """A copy holding only live items (same ids, metadata, parameters): HNSW's way to really remove."""
        ids = np.array(sorted(self.metadata), dtype=np.int64)
        fresh = VectorIndex(self.dim, self.encoder_version, self.factory)
        fresh.nprobe, fresh.ef_search, fresh.tuning = self.nprobe, self.ef_search, self.tuning
        fresh._apply_search_params()
        if len(ids):
            fresh.add_prepared(self.vectors(ids), [self.metadata[int(i)] for i in ids], ids)
        fresh.next_id = self.next_id
        return fresh

    # ------------------------------------------------------------------------------------------ persistence
    def _meta_json(self, extra: dict | None = None) -> dict:
        return {
            "format_version": FORMAT_VERSION, "dim": self.dim, "encoder_version": self.encoder_version,
            "factory": self.factory, "next_id": self.next_id, "count": len(self), "nprobe": self.nprobe,
            "ef_search": self.ef_search, "tuning": self.tuning, "tombstones": sorted(self.tombstones),
            "metric": "inner_product", "saved_at": now_iso(), **(extra or {}),
        }

    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a new snapshot under ``directory`` and switch ``CURRENT`` to it atomically."""
        save_snapshot(directory, lambda path: _faiss().write_index(self._index, str(path)), self.metadata,
                      self._meta_json(extra))

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool | None = None) -> VectorIndex:
        return cls.load_with_extra(directory, mmap)[0]

    @classmethod
    def load_with_extra(cls, directory: str | os.PathLike, mmap: bool | None = None) -> tuple[VectorIndex, dict]:
        """Load the current snapshot; also return its meta.json (the durable index keeps its log position there).

        ``mmap``: True maps the FAISS file, False reads it, None maps it when large (``index.snapshot.use_mmap``).
        """
        faiss_file, meta, metadata = load_snapshot(directory, FORMAT_VERSION)
        self = cls.__new__(cls)
        self.dim = int(meta["dim"])
        self.encoder_version = str(meta["encoder_version"])
        self.factory = str(meta["factory"])
        self.spec = parse_factory(self.factory)
        try:
            self._index, mapped = read_index(faiss_file, mmap)
        except Exception as exc:
            raise IndexStoreError(f"index {directory}: cannot read {faiss_file.name}: {str(exc).splitlines()[0]}"
                                  ) from None
        self.nprobe, self.ef_search = int(meta.get("nprobe", 0)), int(meta.get("ef_search", 0))
        self.tuning = meta.get("tuning")
        self.next_id = int(meta["next_id"])
        self.tombstones = {int(i) for i in meta.get("tombstones", [])}
        self.metadata = metadata
        self._runtime(str(faiss_file) if mapped else None)
        if len(self.metadata) + len(self.tombstones) != self._index.ntotal:
            raise IndexStoreError(
                f"index {directory}: {self._index.ntotal} vectors but {len(self.metadata)} metadata rows (corrupt?)"
            )
        return self, meta

    # ------------------------------------------------------------------------------------------ building
    def _tune(self, unit: np.ndarray, held: np.ndarray, target: float) -> None:
        """nprobe / efSearch for recall >= ``target`` on ``unit[held]``, rows not added yet (``index.tuning``)."""
        ivf = self.spec.kind == "IVF"
        lo, hi = (1, self.spec.nlist) if ivf else EF_SEARCH_RANGE
        truth = tuning.exact_neighbours(unit, held)  # row positions = ids in a fresh build
        self.tuning = tuning.tune(lambda q, k: self._index.search(q, k)[1],
                                  lambda v: self.set_search_params(**{"nprobe" if ivf else "ef_search": v}),
                                  unit[held], truth, "nprobe" if ivf else "efSearch", lo, hi, target=target,
                                  label=self.factory).to_json()

    @classmethod
    def build(cls, vectors: np.ndarray, metadata: list[dict], encoder_version: str, factory: str | None = "auto",
              memory_budget_bytes: int | None = None, recall_target: float | None = tuning.DEFAULT_RECALL_TARGET
              ) -> VectorIndex:
        """One-shot build; ``factory='auto'`` asks :func:`choose_index` with the real N. An approximate index gets
        nprobe / efSearch for ``recall_target`` (None: the defaults) on a held-out sample, added last."""
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise IndexStoreError(f"vectors must be 2-D, got shape {list(x.shape)}")
        if not factory or factory == "auto":
            factory = choose_index(len(x), x.shape[1], memory_budget_bytes or DEFAULT_MEMORY_BUDGET)[0]
        idx = cls(x.shape[1], encoder_version, factory)
        unit, metas = idx.prepare_add(x, metadata, encoder_version)
        tuned = recall_target is not None and idx.spec.kind in ("IVF", "HNSW")
        rest, held = tuning.held_out(len(unit)) if tuned else (np.arange(len(unit)), np.arange(0))
        if not idx._index.is_trained:  # the held-out rows stay out of k-means too (when enough rows remain)
            idx._train(unit, rest if len(rest) >= idx.spec.nlist else None)
        for rows in (rest, held):
            if rows is held and len(held):
                idx._tune(unit, held, recall_target)
            for lo in range(0, len(rows), ADD_CHUNK):  # chunks: no second full copy of the vectors
                part = rows[lo:lo + ADD_CHUNK]
                idx.add_prepared(unit[part], [metas[i] for i in part], part.astype(np.int64))
        return idx
