"""KnnClassifier: weighted cosine vote among the k nearest labelled embeddings (Wu et al. 2018 / DINO style).

Each neighbour votes for its class with weight exp(cos / temperature); the normalised votes are the class
probabilities. Exact FAISS inner-product search (labelled sets are small next to the collection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from index.fsio import atomic_write, atomic_write_bytes
from index.vector_index import IndexStoreError, VersionMismatchError, normalize

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
        self.vectors = normalize(x, x.shape[1])
        self.labels = check_labels(labels, len(x), classes)
        self.classes = list(classes)
        if k < 1 or temperature <= 0:
            raise IndexStoreError(f"k must be >= 1 and temperature > 0 (got k={k}, temperature={temperature})")
        self.k, self.temperature, self.encoder_version = int(k), float(temperature), encoder_version
        import faiss

        self._index = faiss.IndexFlatIP(self.vectors.shape[1])
        self._index.add(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """float ``[N, n_classes]``, rows sum to 1."""
        q = normalize(X, self.dim, "queries")
        k = min(self.k, len(self.vectors))
        sims, idx = self._index.search(q, k)
        w = np.exp((sims - sims[:, :1]) / self.temperature)  # shifted by the best score: no overflow
        probs = np.zeros((len(q), len(self.classes)), dtype=np.float64)
        np.add.at(probs, (np.repeat(np.arange(len(q)), k), self.labels[idx].ravel()), w.ravel())
        return probs / probs.sum(axis=1, keepdims=True)

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
