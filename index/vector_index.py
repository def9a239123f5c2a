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
  * FAISS GPU is used for searching when ``faiss.get_num_gpus() > 0`` (Flat / IVF), the CPU index stays the
    source of truth.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from index.chooser import choose_index, default_nprobe, parse_factory
from index.errors import IndexStoreError, VersionMismatchError
from index.fsio import now_iso
from index.snapshot import load_snapshot, save_snapshot

log = logging.getLogger(__name__)
__all__ = ["Hit", "IndexStoreError", "VectorIndex", "VersionMismatchError", "normalize", "set_omp_threads"]

FORMAT_VERSION = 1
DEFAULT_EF_SEARCH = 128
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
    """FAISS's OpenMP threads for this process (global). Why: one query at a time on a busy CPU box runs up to
    ~30x slower with several OpenMP threads (measured here: 1,205 vs 43 single-query QPS, Flat 10k×256, on 2
    loaded cores); a service that searches from several request threads wants 1 (it calls this at start-up)."""
    _faiss().omp_set_num_threads(max(1, int(n)))


def gpu_count() -> int:
    try:
        return int(_faiss().get_num_gpus())
    except Exception:  # CPU-only builds may lack the symbol
        return 0


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
        self._gpu = None  # (resources, gpu index) cache, dropped on every change
        self._gpu_lock = threading.Lock()  # concurrent searches (DurableIndex readers) build it once
        self._apply_search_params()

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def ntotal(self) -> int:
        """Vectors held by FAISS (tombstoned HNSW entries included)."""
        return int(self._index.ntotal)

    def _check_version(self, encoder_version: str, what: str) -> None:
        if encoder_version != self.encoder_version:
            raise VersionMismatchError(
                f"{what} come from encoder {encoder_version!r} but this index belongs to encoder "
                f"{self.encoder_version!r}; rebuild the index for the new encoder (byol index build)"
            )

    @property
    def _id_mapped(self) -> bool:
        """Flat/HNSW sit in an IDMap2 (their own ids are positions); IVF stores our ids natively.

        Why not IDMap2 around IVF too: IDMap2.remove_ids compacts its id table while IVF keeps the old
        positions in its lists, so after a remove ids point at the wrong vectors.
        """
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
        """Validate an add without changing anything: normalised vectors and completed metadata.

        Split from :meth:`add` so the durable index can log exactly what it will apply.
        """
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
        if not self._index.is_trained:
            self._train(x)
        self._index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
        for i, m in zip(ids.tolist(), metas, strict=True):
            self.metadata[int(i)] = m
        self.next_id = max(self.next_id, int(ids.max()) + 1)
        self._gpu = None

    def _train(self, x: np.ndarray) -> None:
        cap = TRAIN_POINTS_PER_LIST * max(self.spec.nlist, 1)
        sample = x if len(x) <= cap else x[np.random.default_rng(0).choice(len(x), cap, replace=False)]
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
        """The GPU copy of the inner index when a GPU is present (Flat/IVF), else None."""
        with self._gpu_lock:
            if self._gpu is None:
                self._gpu = self._to_gpu()
        return self._gpu or None

    def _to_gpu(self):
        if gpu_count() > 0 and self.spec.kind != "HNSW" and self._index.ntotal:
            faiss = _faiss()
            try:
                res = faiss.StandardGpuResources()
                return res, faiss.index_cpu_to_gpu(res, 0, self._inner())
            except Exception as exc:  # unsupported type or out of GPU memory: CPU still answers
                log.warning("FAISS GPU unavailable for %s, searching on CPU: %s", self.factory, exc)
        return False

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._searcher()
        if gpu is not None:
            scores, pos = gpu[1].search(q, k)
            if not self._id_mapped:
                return scores, pos
            id_map = _faiss().vector_to_array(self._index.id_map)
            ids = np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)
            return scores, ids
        return self._index.search(q, k)

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
        for srow, irow in zip(scores, ids, strict=True):
            hits = []
            for s, i in zip(srow.tolist(), irow.tolist(), strict=True):
                if i < 0 or i in self.tombstones or i not in self.metadata:
                    continue
                hits.append(Hit(int(i), float(s), dict(self.metadata[i])))
                if len(hits) == k:
                    break
            out.append(hits)
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
        fresh.nprobe, fresh.ef_search = self.nprobe, self.ef_search
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
            "ef_search": self.ef_search, "tombstones": sorted(self.tombstones), "metric": "inner_product",
            "saved_at": now_iso(), **(extra or {}),
        }

    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a new snapshot under ``directory`` and switch ``CURRENT`` to it atomically."""
        save_snapshot(directory, lambda path: _faiss().write_index(self._index, str(path)), self.metadata,
                      self._meta_json(extra))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VectorIndex:
        return cls.load_with_extra(directory)[0]

    @classmethod
    def load_with_extra(cls, directory: str | os.PathLike) -> tuple[VectorIndex, dict]:
        """Load the current snapshot; also return its meta.json (the durable index keeps its log position there)."""
        faiss_file, meta, metadata = load_snapshot(directory, FORMAT_VERSION)
        self = cls.__new__(cls)
        self.dim = int(meta["dim"])
        self.encoder_version = str(meta["encoder_version"])
        self.factory = str(meta["factory"])
        self.spec = parse_factory(self.factory)
        try:
            self._index = _faiss().read_index(str(faiss_file))
        except Exception as exc:
            raise IndexStoreError(f"index {directory}: cannot read {faiss_file.name}: {str(exc).splitlines()[0]}"
                                  ) from None
        self.nprobe = int(meta.get("nprobe", 0))
        self.ef_search = int(meta.get("ef_search", 0))
        self.next_id = int(meta["next_id"])
        self.tombstones = {int(i) for i in meta.get("tombstones", [])}
        self.metadata = metadata
        self._gpu = None
        self._gpu_lock = threading.Lock()
        self._apply_search_params()  # read_index forgets nprobe / efSearch
        if len(self.metadata) + len(self.tombstones) != self._index.ntotal:
            raise IndexStoreError(
                f"index {directory}: {self._index.ntotal} vectors but {len(self.metadata)} metadata rows (corrupt?)"
            )
        return self, meta

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, metadata: list[dict], encoder_version: str, factory: str | None = "auto",
              memory_budget_bytes: int | None = None) -> VectorIndex:
        """One-shot build; ``factory='auto'`` asks :func:`choose_index` with the real N."""
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise IndexStoreError(f"vectors must be 2-D, got shape {list(x.shape)}")
        if not factory or factory == "auto":
            kwargs = {"memory_budget_bytes": memory_budget_bytes} if memory_budget_bytes else {}
            factory = choose_index(len(x), x.shape[1], **kwargs)[0]
        idx = cls(x.shape[1], encoder_version, factory)
        idx.add(x, metadata, encoder_version)
        return idx
