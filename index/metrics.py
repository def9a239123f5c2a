"""The one set of representation-quality metrics: weighted kNN, linear probe, raw-pixel baseline (torch-free).

Every number the product reports about an encoder comes from :func:`score` on vectors: ``byol eval`` (PyTorch
vectors of ``encoder.pt``), ``byol probe fit`` and the retrain gate (ONNX Runtime vectors of a bundle), the kNN
monitor during training, and the benchmarks. Same function, same splits (``serving.contract.sources``), so the
same encoder and data give the same figures wherever they are printed.

numpy + scikit-learn only (no FAISS): it also runs where training runs, GPU boxes included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from index.knn import KnnClassifier, knn_votes, unit_rows
from index.probe import LinearProbe

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07  # Wu et al. 2018 / the SSL literature's weighted kNN


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Weighted kNN (cosine top-k, votes weighted by exp(sim / T)): the share of test vectors voted right."""
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = knn_votes(unit_rows(train_x), train_y, unit_rows(test_x), k, temperature, n_classes)
    return float((votes.argmax(axis=1) == test_y).mean()) if len(test_y) else 0.0


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` a fitted classifier (``predict_proba``) labels as ``y``."""
    return float((model.predict_proba(x).argmax(axis=1) == np.asarray(y)).mean()) if len(y) else 0.0


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline's 'embedding': the flattened pixels scaled to [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@dataclass
class Scores:
    """Accuracies of one embedding on one split, and the classifiers that earned them."""

    knn: float
    probe: float | None
    knn_model: KnnClassifier
    probe_model: LinearProbe | None

    def as_dict(self) -> dict:
        return {"knn": self.knn} if self.probe is None else {"knn": self.knn, "probe": self.probe}


def score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          classes: list[str] | None = None, k: int = DEFAULT_K, probe: bool = True,
          encoder_version: str = "") -> Scores:
    """Fit a weighted kNN classifier and (with ``probe``) a linear probe on ``train``, score both on ``test``."""
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    if classes is None:
        classes = [str(c) for c in range(int(max(train_y.max(), test_y.max())) + 1)]
    knn = KnnClassifier(train_x, train_y, classes, k=k, encoder_version=encoder_version)
    lin = LinearProbe.fit(train_x, train_y, classes, encoder_version) if probe else None
    return Scores(accuracy(knn, test_x, test_y), None if lin is None else accuracy(lin, test_x, test_y), knn, lin)


Embedder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, S, S, 3] → float32 [N, D]


def evaluate(embedders: dict[str, Embedder], train_images: np.ndarray, train_y: np.ndarray,
             test_images: np.ndarray, test_y: np.ndarray, k: int = DEFAULT_K, probe: bool = True,
             raw_pixels: bool = True) -> dict[str, dict]:
    """``{name: {"knn", "probe"}}`` for every embedder, plus ``raw_pixels`` (the floor any encoder must beat)."""
    out = {}
    for name, embed in embedders.items():
        out[name] = score(embed(train_images), train_y, embed(test_images), test_y, k=k, probe=probe).as_dict()
    if raw_pixels:
        out["raw_pixels"] = score(pixel_features(train_images), train_y, pixel_features(test_images), test_y,
                                  k=k, probe=probe).as_dict()
    return out
