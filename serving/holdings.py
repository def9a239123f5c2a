"""What the index service holds for ONE bundle version — its durable index and its classifiers — as one immutable
object, and the open indexes shared between such objects.

The index service (:mod:`serving.index_service`) holds a single :class:`Holdings` reference: the served version. A
vector that comes in names the version that made it, and only that version's holdings answer it (the index
refuses another: ``index.durable.DurableIndex.search`` checks the version too). No ONNX Runtime session lives here
beyond a reload's reconcile: embedding is the embedding workers' job (:mod:`serving.runtime`). Torch-free.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from serving import metrics, paths
from serving.contract.atomic import now_iso
from serving.contract.bundle import BundleError, read_bundle

log = logging.getLogger(__name__)


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
class Holdings:
    """One version's index and classifiers (each may be absent: ``missing`` says why, the message a 409 carries)."""

    version: str
    dim: int
    index: object | None  # index.durable.DurableIndex
    probe: object | None  # index.probe.LinearProbe
    knn: object | None  # index.knn.KnnClassifier
    missing: dict[str, str]
    loaded_at: str = ""

    def require_index(self):
        """The index, or the 409 naming why this version has none."""
        if self.index is None:
            from serving.errors import Conflict  # imports BentoML: not at module level

            raise Conflict(self.missing["index"])
        return self.index

    def search(self, vectors: np.ndarray, k: int, endpoint: str) -> list:
        """``k`` neighbours of each vector in this version's index (blocking), timed for ``/metrics``."""
        index = self.require_index()
        start = time.perf_counter()
        hits = index.search(vectors, k, self.version)
        metrics.observe_search(endpoint, time.perf_counter() - start)
        return hits

    def classifier(self, method: str):
        """``probe`` or ``knn`` → the classifier, or the 409 naming why there is none."""
        clf = {"probe": self.probe, "knn": self.knn}[method]
        if clf is None:
            from serving.errors import Conflict

            raise Conflict(self.missing.get(method) or f"no {method} classifier for version {self.version}")
        return clf

    def info(self) -> dict:
        classes = next(([str(c) for c in clf.classes] for clf in (self.probe, self.knn) if clf is not None), None)
        return {
            "index": None if self.index is None else {
                "version": self.index.encoder_version, "size": len(self.index), "factory": self.index.factory},
            "open_indexes": INDEXES.open_versions(),  # version → holdings using it (old ones are closed)
            "classes": classes,
            "classifiers": [name for name, c in (("probe", self.probe), ("knn", self.knn)) if c is not None],
            "missing": self.missing,
            "index_loaded_at": self.loaded_at,
        }

    def report(self) -> None:
        """The served version and its index size for ``/metrics`` (blocking: the size waits for a write)."""
        metrics.served(self.version, None if self.index is None else len(self.index))

    def close(self) -> None:
        """Give the index back (closed when no other holdings use it). Call once."""
        if self.index is not None:
            INDEXES.release(self.version)


def load_holdings(tag: str) -> Holdings:
    """Open what the index service needs of bundle ``tag``: its index and classifiers. A missing index or probe is
    not an error (the endpoints needing them answer 409 with the reason); a *present but mismatched* one is, as it
    would answer with wrong results (:class:`BundleError`, one line)."""
    from serving.store import bundle_path

    _, manifest = read_bundle(bundle_path(tag), verify_hash=False)  # the embedding workers check the graph
    version, dim = manifest.version, int(manifest.embedding_dim)
    missing: dict[str, str] = {}
    try:
        index, why = INDEXES.acquire(version, dim)
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
    log.info("index service: version %s; index: %s; classifiers: %s", version,
             "none" if index is None else f"{len(index)} items", [k for k in ("probe", "knn") if k not in missing])
    return Holdings(version=version, dim=dim, index=index, probe=probe, knn=knn,
                    missing=missing, loaded_at=now_iso())
