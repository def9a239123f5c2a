"""KnnClassifier: weighted cosine vote among the k nearest labelled embeddings (Wu et al. 2018 / DINO style).

Each neighbour votes for its class with weight exp(cos / temperature); the normalised votes are the class
probabilities. Exact search in numpy (:func:`knn_votes`): labelled sets are small next to the collection, and the
same function scores every kNN figure the product reports (``index.metrics``), where FAISS may not be installed.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from index.fsio import atomic_write, atomic_write_bytes
from index.vector_index import IndexStoreError, VersionMismatchError

KNN_NPZ = "knn.npz"
KNN_JSON = "knn.json"


def save_fitted(directory: str | os.PathLike, stem: str, arrays: dict[str, np.ndarray], info: dict) -> None:
    """A fitted classifier as ``<stem>.npz`` (arrays) + ``<stem>.json`` (classes, encoder version, settings),
    each written atomically; the json goes last, so a reader never sees settings without their arrays."""
    directory = Path(directory)

    def _npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(directory / f"{stem}.npz", _npz)
    atomic_write_bytes(directory / f"{stem}.json", (json.dumps(info, indent=1) + "\n").encode())


def load_fitted(directory: str | os.PathLike, stem: str, what: str, encoder_version: str) -> tuple[dict, dict]:
    """``(info, arrays)`` of :func:`save_fitted`; refuses one fitted on another encoder version."""
    directory = Path(directory)
    try:
        info = json.loads((directory / f"{stem}.json").read_text())
        with np.load(directory / f"{stem}.npz") as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise IndexStoreError(f"no {what} at {directory}: {exc}") from None
    if info["encoder_version"] != encoder_version:
        raise VersionMismatchError(
            f"{what} at {directory} was fitted on encoder {info['encoder_version']!r}, "
            f"not {encoder_version!r}; run byol probe fit again"
        )
    return info, arrays


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``[N, D]`` finite numbers → float32 rows of unit L2 norm (an all-zero row stays zero: it votes for nothing
    in particular rather than failing a whole evaluation)."""
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise IndexStoreError(f"expected a numeric [N, D] array, got {x.dtype} {list(x.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise IndexStoreError("vectors contain NaN or infinite values")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top_k(bank: np.ndarray, queries: np.ndarray, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, bank rows)`` of each query's ``kmax`` most similar bank rows, best first."""
    sims = queries @ bank.T
    top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax] if kmax < len(bank) else np.broadcast_to(
        np.arange(len(bank)), (len(sims), len(bank)))
    s = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")  # best first, so each k takes a prefix
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(top, order, axis=1)


def knn_votes(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int | tuple[int, ...],
              temperature: float, n_classes: int, chunk: int = 1024):
    """Class votes ``[N, n_classes]`` of the ``k`` most cosine-similar bank rows, each weighted exp(sim / T).

    ``bank`` and ``queries`` must be unit rows. Weights are shifted by each query's best similarity (the same
    normalised votes, no overflow at small T). Exact: one matrix product per ``chunk`` queries; several chunks
    (an evaluation's 10,000 queries) are ranked in parallel threads — numpy's partition runs single-threaded with
    the GIL released, and it is most of the time. With a tuple of ``k`` values the similarities are computed once
    and ``{k: votes}`` is returned.
    """
    ks = (k,) if isinstance(k, int) else tuple(k)
    kmax = min(max(ks), len(bank))
    votes = {kk: np.zeros((len(queries), n_classes), dtype=np.float64) for kk in ks}
    starts = range(0, len(queries), chunk)
    threads = min(len(starts), os.cpu_count() or 1, 4)

    def ranked(lo: int):
        return lo, *_top_k(bank, queries[lo:lo + chunk], kmax)

    with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        for lo, s, top in (pool.map(ranked, starts) if pool else map(ranked, starts)):
            w = np.exp((s - s[:, :1]) / temperature)
            labels = bank_labels[top]
            for kk in ks:
                n = min(kk, kmax)
                rows = np.repeat(np.arange(lo, lo + len(s)), n)
                np.add.at(votes[kk], (rows, labels[:, :n].ravel()), w[:, :n].ravel())
    return votes[ks[0]] if isinstance(k, int) else votes


def check_labels(labels: np.ndarray, n: int, classes: list[str]) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise IndexStoreError(f"{n} vectors but labels have shape {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise IndexStoreError(f"labels must be integer class indices, got dtype {y.dtype}")
    if len(classes) < 2:
        raise IndexStoreError(f"need at least 2 classes, got {len(classes)}")
    if n and (y.min() < 0 or y.max() >= len(classes)):
        raise IndexStoreError(f"labels must lie in [0, {len(classes) - 1}]")
    return y.astype(np.int64)


class KnnClassifier:
    def __init__(self, vectors: np.ndarray, labels: np.ndarray, classes: list[str], k: int = 20,
                 temperature: float = 0.07, encoder_version: str = "") -> None:
        x = np.asarray(vectors)
        if x.ndim != 2 or len(x) == 0:
            raise IndexStoreError(f"kNN needs a non-empty [N, D] array, got shape {list(x.shape)}")
        self.vectors = unit_rows(x)
        self.labels = check_labels(labels, len(x), classes)
        self.classes = list(classes)
        if k < 1 or temperature <= 0:
            raise IndexStoreError(f"k must be >= 1 and temperature > 0 (got k={k}, temperature={temperature})")
        self.k, self.temperature, self.encoder_version = int(k), float(temperature), encoder_version

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """float ``[N, n_classes]``, rows sum to 1."""
        q = unit_rows(np.asarray(X)[None] if np.ndim(X) == 1 else X)
        if q.shape[1] != self.dim:
            raise IndexStoreError(f"queries must have shape [N, {self.dim}], got {list(q.shape)}")
        votes = knn_votes(self.vectors, self.labels, q, self.k, self.temperature, len(self.classes))
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def save(self, directory: str | os.PathLike) -> None:
        save_fitted(directory, "knn", {"vectors": self.vectors, "labels": self.labels},
                    {"classes": self.classes, "k": self.k, "temperature": self.temperature,
                     "encoder_version": self.encoder_version, "dim": self.dim})

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder_version: str) -> KnnClassifier:
        info, data = load_fitted(directory, "knn", "kNN classifier", encoder_version)
        return cls(data["vectors"], data["labels"], info["classes"], info["k"], info["temperature"],
                   info["encoder_version"])
