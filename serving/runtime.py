"""The loaded model triple — encoder + index + classifiers of ONE bundle version — as one immutable object.

The service holds a single :class:`Runtime` reference. Each request takes that reference once, at its start, and
answers entirely from it, so a hot swap (``/admin/reload``) never mixes an encoder of one version with an index or
probe of another, and every response can name the version that produced it. Torch-free.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from anyio import to_thread

from serving import metrics, paths
from serving.batching import MicroBatcher
from serving.contract.atomic import now_iso
from serving.contract.bundle import MODEL_NAME, BundleError
from serving.contract.encoder import OnnxEncoder
from serving.contract.sources import decode_each, read_uri
from serving.release import served_tag

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 64  # images per ONNX Runtime call made by the micro-batcher
MAX_WAIT_MS = 2.0  # longest a lone request waits for others to share its model call
ORT_THREADS_ENV = "BYOL_ORT_THREADS"  # ONNX Runtime intra-op threads of the served encoder (unset or 0: all cores)
GRAPH_ENV = "BYOL_ENCODER_FILE"  # which graph of the bundle to serve (unset: encoder.onnx; e.g. encoder_int8.onnx)


def ort_threads(env=None) -> int:
    """``BYOL_ORT_THREADS`` as an int (0 when unset); a malformed value is an error at start."""
    value = (os.environ if env is None else env).get(ORT_THREADS_ENV, "").strip()
    try:
        threads = int(value or 0)
    except ValueError:
        raise BundleError(f"{ORT_THREADS_ENV} must be an integer, got {value!r}") from None
    if threads < 0:
        raise BundleError(f"{ORT_THREADS_ENV} must be 0 (all cores) or more, got {threads}")
    return threads


def _served_encoder(tag: str) -> OnnxEncoder:
    """Bundle ``tag``'s graph as served: ``BYOL_ENCODER_FILE`` picks it, ``BYOL_ORT_THREADS`` sizes its threads."""
    from serving.store import bundle_path

    return OnnxEncoder(bundle_path(tag), intra_op_threads=ort_threads(),
                       onnx_file=os.environ.get(GRAPH_ENV, "").strip() or None)


def resolve_tag(explicit: str | None = None) -> str:
    """Which bundle to serve: an explicit tag, else ``$BYOL_MODEL_TAG``, else — inside a built Bento — the encoder it
    packed, else the promoted release, else latest."""
    return explicit or os.environ.get("BYOL_MODEL_TAG") or packed_tag() or served_tag()


def packed_tag(bento_root: Path | None = None) -> str | None:
    """The encoder tag a built Bento packed, when this code runs from one (``<bento>/src/serving/runtime.py`` beside
    ``<bento>/bento.yaml``). A Bento must serve what it packed: the store it is served from may hold newer encoders
    (and a container's store holds only the packed one)."""
    root = bento_root or Path(__file__).resolve().parents[2]
    import yaml

    try:
        info = yaml.safe_load((root / "bento.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    tags = [m.get("tag", "") for svc in (info or {}).get("services") or [] for m in svc.get("models") or []]
    return next((t for t in tags if t.startswith(f"{MODEL_NAME}:")), None)


class _IndexCache:
    """Open durable indexes by version, shared by the runtimes that use them and closed with the last of them.

    An index directory takes a write lock per open, so a reload to a version already open in this process (same
    version, or a rollback) must reuse the open object, not open it twice; and an index no runtime uses any more is
    closed at once (its log and lock released, its memory freed with the last request still holding it), so memory
    stays flat however many reloads a server sees.
    """

    def __init__(self) -> None:
        self._open: dict[str, list] = {}  # version → [index, number of runtimes holding it]
        self._lock = threading.Lock()

    def acquire(self, version: str, dim: int):
        """The open index of ``version`` (one more holder), or ``(None, why)`` when none was built."""
        with self._lock:
            if version in self._open:
                self._open[version][1] += 1
                return self._open[version][0], ""
            from index.durable import DurableIndex

            directory = paths.index_dir(version)
            if not DurableIndex.exists(directory):
                return None, f"no index for version {version}; run 'byol index build --model {version}'"
            idx = DurableIndex.open(directory, dim=dim, encoder_version=version)
            self._open[version] = [idx, 1]
            return idx, ""

    def release(self, version: str) -> None:
        """One holder fewer; the last one closes the index."""
        with self._lock:
            entry = self._open.get(version)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._open[version]
        entry[0].close()
        log.info("closed the index of %s (no runtime uses it any more)", version)

    def open_versions(self) -> dict[str, int]:
        with self._lock:
            return {v: n for v, (_, n) in self._open.items()}

    def close_all(self) -> None:
        with self._lock:
            entries, self._open = list(self._open.values()), {}
        for idx, _ in entries:
            idx.close()


INDEXES = _IndexCache()


def _load_classifiers(version: str) -> tuple[object | None, object | None, str]:
    directory = paths.probe_dir(version)
    if not directory.is_dir():
        return None, None, f"no probe for version {version}; run 'byol probe fit --model {version}'"
    from index.knn import KNN_JSON, KnnClassifier
    from index.probe import PROBE_JSON, LinearProbe

    probe = LinearProbe.load(directory, version) if (directory / PROBE_JSON).is_file() else None
    knn = KnnClassifier.load(directory, version) if (directory / KNN_JSON).is_file() else None
    return probe, knn, "" if (probe or knn) else f"probe directory {directory} holds no classifier"


@dataclass(frozen=True)
class Runtime:
    """One version's encoder, index and classifiers, plus the batcher that feeds its encoder."""

    encoder: OnnxEncoder
    index: object | None  # index.durable.DurableIndex
    probe: object | None  # index.probe.LinearProbe
    knn: object | None  # index.knn.KnnClassifier
    missing: dict[str, str]  # component → why it is absent (the message a 409 carries)
    batcher: MicroBatcher = field(repr=False)
    loaded_at: str = ""

    @property
    def version(self) -> str:
        return self.encoder.version

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def input_size(self) -> int:
        return self.encoder.input_size

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N,S,S,3]`` → float32 ``[N,D]`` through this version's micro-batcher."""
        start = time.perf_counter()
        out = await self.batcher.submit(images)
        metrics.observe_embed(time.perf_counter() - start)
        return out

    def require_index(self):
        """The index, or the 409 naming why this version has none."""
        if self.index is None:
            from serving.errors import Conflict  # imports BentoML: not at module level (`byol serve` imports us first)

            raise Conflict(self.missing["index"])
        return self.index

    async def search(self, vectors: np.ndarray, k: int, endpoint: str) -> list:
        """``k`` neighbours of each vector in this version's index (in a thread), timed for ``/metrics``."""
        index = self.require_index()
        start = time.perf_counter()
        hits = await to_thread.run_sync(index.search, vectors, k, self.version)
        metrics.observe_search(endpoint, time.perf_counter() - start)
        return hits

    def classifier(self, method: str):
        """``probe`` or ``knn`` → the classifier, or ``(None, why)``."""
        clf = {"probe": self.probe, "knn": self.knn}[method]
        if clf is None:
            return None, self.missing.get(method) or f"no {method} classifier for version {self.version}"
        return clf, ""

    def info(self) -> dict:
        m = self.encoder.manifest
        classes = None
        for clf in (self.probe, self.knn):
            if clf is not None:
                classes = [str(c) for c in clf.classes]
                break
        return {
            "version": self.version,
            "dim": self.dim,
            "input_size": self.input_size,
            "architecture": m.architecture,
            "parent_version": m.parent_version,
            "created_at": m.created_at,
            "metrics": m.metrics,
            "providers": self.encoder.providers,
            "graph": self.encoder.onnx_file,  # encoder.onnx unless BYOL_ENCODER_FILE picks another of the bundle
            "loaded_at": self.loaded_at,
            "index": None if self.index is None else {
                "version": self.index.encoder_version, "size": len(self.index), "factory": self.index.factory},
            "open_indexes": INDEXES.open_versions(),  # version → runtimes holding it (old ones are closed)
            "classes": classes,
            "classifiers": [name for name, c in (("probe", self.probe), ("knn", self.knn)) if c is not None],
            "missing": self.missing,
            "batching": {"max_batch_size": self.batcher.max_batch_size,
                         "max_wait_ms": self.batcher.max_wait_s * 1000.0,
                         "recent_batches": len(self.batcher.batch_sizes),
                         "recent_mean_batch": float(np.mean(self.batcher.batch_sizes)) if self.batcher.batch_sizes
                         else 0.0},
        }

    def embed_items(self, items: list, collection) -> tuple[np.ndarray, list]:
        """Collection items → vectors of those that can still be read (``index.writes.reconcile``'s ``embed``)."""
        pixels, readable, _ = decode_each(items, lambda it: read_uri(it.uri, self.input_size, collection),
                                          what="collection item")
        vectors = self.encoder.embed_many(np.stack(pixels)) if pixels else np.zeros((0, self.dim), np.float32)
        return vectors, readable

    def close(self) -> None:
        """Stop the batcher's worker and give the index back (closed when no other runtime holds it). Requests
        still holding this runtime finish: embedding runs unbatched, searches still work; writes go to the runtime
        served now (``serving.served``), never here. Call once."""
        if self.batcher.closed:
            return
        self.batcher.close()
        if self.index is not None:
            INDEXES.release(self.version)


def check_bundle(tag: str) -> str:
    """Resolve and test-run the bundle a server would load; returns its version or raises ``BundleError``.

    Cheap enough to run before a server starts, so a missing or corrupt bundle ends with one line there.
    """
    encoder = _served_encoder(tag)
    _test_run(encoder)
    return encoder.version


def _test_run(encoder: OnnxEncoder) -> None:
    """A graph that loads but cannot run (or answers the wrong shape) must fail now, not on the first request."""
    img = np.zeros((1, encoder.input_size, encoder.input_size, 3), dtype=np.uint8)
    try:
        out = encoder.embed(img)
    except Exception as exc:
        raise BundleError(f"bundle {encoder.version}: the encoder fails on a test image: {exc}") from None
    if out.shape != (1, encoder.dim) or not np.all(np.isfinite(out)):
        raise BundleError(f"bundle {encoder.version}: the encoder returns {list(out.shape)} (expected "
                          f"[1, {encoder.dim}]) or non-finite values")


def load_runtime(tag: str, *, max_batch_size: int = MAX_BATCH_SIZE, max_wait_ms: float = MAX_WAIT_MS) -> Runtime:
    """Load everything one version needs; raise :class:`BundleError` (one line) when the bundle is unusable.

    A missing index or probe is not an error here (embedding still works); the endpoints needing them answer 409
    with the reason. A *present but mismatched* index or probe is an error: it would answer with wrong results.
    """
    encoder = _served_encoder(tag)
    version = encoder.version
    _test_run(encoder)
    missing: dict[str, str] = {}
    try:
        index, why = INDEXES.acquire(version, encoder.dim)
    except ImportError as exc:
        index, why = None, f"index support is not installed: {exc}"
    except ValueError as exc:  # IndexStoreError / VersionMismatchError are ValueErrors
        raise BundleError(f"index for version {version} cannot be used: {exc}") from None
    if why:
        missing["index"] = why
    try:
        probe, knn, why = _load_classifiers(version)
    except ImportError as exc:
        probe, knn, why = None, None, f"classifier support is not installed: {exc}"
    except ValueError as exc:
        if index is not None:
            INDEXES.release(version)
        raise BundleError(f"probe for version {version} cannot be used: {exc}") from None
    if probe is None:
        missing["probe"] = why or f"no linear probe for version {version}; run 'byol probe fit --model {version}'"
    if knn is None:
        missing["knn"] = why or f"no kNN classifier for version {version}; run 'byol probe fit --model {version}'"
    log.info("loaded bundle %s (dim %d, input %d px, providers %s); index: %s; classifiers: %s",
             version, encoder.dim, encoder.input_size, encoder.providers,
             "none" if index is None else f"{len(index)} items", [k for k in ("probe", "knn") if k not in missing])
    return Runtime(encoder=encoder, index=index, probe=probe, knn=knn, missing=missing,
                   batcher=MicroBatcher(encoder.embed, max_batch_size, max_wait_ms, on_batch=metrics.observe_batch),
                   loaded_at=now_iso())
