"""LinearProbe: logistic regression on frozen embeddings, the standard measure of representation quality.

scikit-learn is used only inside :meth:`LinearProbe.fit`; prediction is a standardise + affine + softmax in
numpy, so a serving box loads ``probe.npz`` without sklearn's pickles.
"""

from __future__ import annotations

import os

import numpy as np

from index.knn import check_labels, load_fitted, save_fitted
from index.vector_index import IndexStoreError

PROBE_NPZ = "linear_probe.npz"
PROBE_JSON = "linear_probe.json"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearProbe:
    def __init__(self, coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                 classes: list[str], encoder_version: str = "") -> None:
        self.coef = np.asarray(coef, dtype=np.float64)  # [C, D]
        self.intercept = np.asarray(intercept, dtype=np.float64)  # [C]
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.classes = list(classes)
        self.encoder_version = encoder_version
        if self.coef.shape != (len(self.classes), len(self.mean)):
            raise IndexStoreError(f"probe weights {list(self.coef.shape)} do not match "
                                  f"{len(self.classes)} classes x {len(self.mean)} dims")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, classes: list[str], encoder_version: str = "", C: float = 1.0,
            max_iter: int = 1000) -> LinearProbe:
        """Fit on standardised embeddings; classes absent from ``y`` get probability ~0."""
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise IndexStoreError(f"probe needs a non-empty [N, D] array, got shape {list(X.shape)}")
        y = check_labels(y, len(X), classes)
        seen = np.unique(y)
        if len(seen) < 2:
            raise IndexStoreError(f"probe needs at least 2 distinct labels in the training set, got {len(seen)}")
        mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-6
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit((X - mean) / scale, y)
        coef = np.zeros((len(classes), X.shape[1]))
        intercept = np.full(len(classes), -1e9)
        if len(seen) == 2:  # sklearn stores one row for binary problems: logits [0, z]
            coef[seen[1]], intercept[seen[1]] = clf.coef_[0], clf.intercept_[0]
            intercept[seen[0]] = 0.0
        else:
            coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
        return cls(coef, intercept, mean, scale, classes, encoder_version)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise IndexStoreError(f"expected embeddings of shape [N, {self.dim}], got {list(X.shape)}")
        return softmax(((X - self.mean) / self.scale) @ self.coef.T + self.intercept)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def save(self, directory: str | os.PathLike) -> None:
        save_fitted(directory, "linear_probe",
                    {"coef": self.coef, "intercept": self.intercept, "mean": self.mean, "scale": self.scale},
                    {"classes": self.classes, "encoder_version": self.encoder_version, "dim": self.dim})

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder_version: str) -> LinearProbe:
        info, data = load_fitted(directory, "linear_probe", "linear probe", encoder_version)
        return cls(data["coef"], data["intercept"], data["mean"], data["scale"], info["classes"],
                   info["encoder_version"])
