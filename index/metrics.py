"""The one set of representation-quality metrics: weighted kNN, linear probe, raw-pixel baseline (torch-free).

The standard protocol of the self-supervised literature (InstDisc / solo-learn conventions): the bank is the full
train split, the queries the full test split; weighted kNN with k = 20 and k = 200, cosine similarity, votes
weighted exp(sim / 0.07); a linear probe on standardised features fitted to convergence (``index.probe``); every
accuracy with its standard error sqrt(p(1−p)/n). Raw pixels are scored the same way on the true pixels (one channel
when the images are grayscale: 784 features for Fashion-MNIST, not three copies).

Every number the product reports about an encoder comes from :func:`score` on vectors: ``byol eval`` (PyTorch
vectors of ``encoder.pt``), ``byol probe fit`` and the retrain gate (ONNX Runtime vectors of a bundle), the kNN
monitor during training, and the benchmarks. Same function, same splits (``serving.contract.splits``), so the same
encoder and data give the same figures wherever they are printed.

numpy + scipy only (no FAISS): it also runs where training runs, GPU boxes included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from index.knn import KnnClassifier, knn_votes, unit_rows
from index.probe import LinearProbe

DEFAULT_K = 20
EXTRA_K = 200  # the literature reports both
DEFAULT_TEMPERATURE = 0.07  # Wu et al. 2018 / the SSL literature's weighted kNN


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` test items."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Weighted kNN (cosine top-k, votes weighted by exp(sim / T)): the share of test vectors voted right."""
    return knn_accuracies(train_x, train_y, test_x, test_y, (k,), temperature)[k]


def knn_accuracies(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   ks: tuple[int, ...] = (DEFAULT_K, EXTRA_K), temperature: float = DEFAULT_TEMPERATURE
                   ) -> dict[int, float]:
    """:func:`knn_accuracy` for several k at the cost of one: ``{k: accuracy}``."""
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    if not len(test_y):
        return {k: 0.0 for k in ks}
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = knn_votes(unit_rows(train_x), train_y, unit_rows(test_x), tuple(ks), temperature, n_classes)
    return {k: float((v.argmax(axis=1) == test_y).mean()) for k, v in votes.items()}


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` a fitted classifier (``predict_proba``) labels as ``y``."""
    return float((model.predict_proba(x).argmax(axis=1) == np.asarray(y)).mean()) if len(y) else 0.0


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline's 'embedding': the true pixels scaled to [0, 1] — one channel when all three are
    equal (a grayscale data set has 784 features, not three copies of them)."""
    x = images
    if x.ndim == 4 and x.shape[-1] == 3 and np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0],
                                                                                                   x[..., 2]):
        x = x[..., :1]
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


@dataclass
class Scores:
    """Accuracies of one embedding on one split, and the classifiers that earned them."""

    knn: float
    probe: float | None
    knn_model: KnnClassifier
    probe_model: LinearProbe | None
    n_test: int = 0
    knn_extra: dict[int, float] | None = None  # kNN at the other k (k = 200)

    def as_dict(self) -> dict:
        """``{"knn", "knn_200", "probe", "probe_iterations", "probe_converged", "se": {...}, "dim", "n_test"}``."""
        out: dict = {"knn": self.knn, **{f"knn_{k}": v for k, v in (self.knn_extra or {}).items()}}
        if self.probe is not None:
            out.update(probe=self.probe, probe_iterations=self.probe_model.iterations,
                       probe_converged=self.probe_model.converged)
        metrics = [m for m in out if m == "probe" or m.startswith("knn")]
        out["se"] = {m: standard_error(out[m], self.n_test) for m in metrics}
        out.update(dim=self.knn_model.dim, n_test=self.n_test)
        return out


def score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          classes: list[str] | None = None, k: int = DEFAULT_K, probe: bool = True, encoder_version: str = "",
          extra_k: tuple[int, ...] = (EXTRA_K,), probe_init: LinearProbe | None = None) -> Scores:
    """Fit a weighted kNN classifier and (with ``probe``) a linear probe on ``train``, score both on ``test``;
    kNN also at ``extra_k`` (same similarities, one pass). ``probe_init``: see :meth:`LinearProbe.fit`."""
    train_y, test_y = np.asarray(train_y, dtype=np.int64), np.asarray(test_y, dtype=np.int64)
    if classes is None:
        classes = [str(c) for c in range(int(max(train_y.max(), test_y.max())) + 1)]
    knn = KnnClassifier(train_x, train_y, classes, k=k, encoder_version=encoder_version)
    ks = (k, *[e for e in extra_k if e != k])
    accs = knn_accuracies(train_x, train_y, test_x, test_y, ks, knn.temperature)
    lin = LinearProbe.fit(train_x, train_y, classes, encoder_version, init=probe_init) if probe else None
    return Scores(accs[k], None if lin is None else accuracy(lin, test_x, test_y), knn, lin, len(test_y),
                  {e: accs[e] for e in ks[1:]})


Embedder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, S, S, 3] → float32 [N, D]


def evaluate(embedders: dict[str, Embedder], train_images: np.ndarray, train_y: np.ndarray,
             test_images: np.ndarray, test_y: np.ndarray, k: int = DEFAULT_K, probe: bool = True,
             raw_pixels: bool = True, keep: dict | None = None) -> dict[str, dict]:
    """``{name: Scores.as_dict()}`` for every embedder, plus ``raw_pixels`` (the floor any encoder must beat);
    ``keep``, when given, receives each embedder's :class:`Scores` (its fitted classifiers) by name."""
    out = {}
    for name, embed in embedders.items():
        scores = score(embed(train_images), train_y, embed(test_images), test_y, k=k, probe=probe)
        out[name] = scores.as_dict()
        if keep is not None:
            keep[name] = scores
    if raw_pixels:
        out["raw_pixels"] = score(pixel_features(train_images), train_y, pixel_features(test_images), test_y,
                                  k=k, probe=probe).as_dict()
    return out


# ---------------------------------------------------------------------------------------------- without labels
def effective_rank(x: np.ndarray) -> float:
    """RankMe (Garrido et al. 2023): exp(entropy of the normalised singular values) of the unit vectors — ~1 for
    a collapsed embedding (every output the same direction), up to D for one that uses every dimension. Not
    centred: centring would blow a collapsed embedding's round-off noise up to full rank."""
    s = np.linalg.svd(unit_rows(x), compute_uv=False)
    p = s / max(float(s.sum()), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def embedding_std(x: np.ndarray) -> float:
    """Mean per-dimension std of the unit vectors (BYOL's collapse monitor: 0 when every output is the same)."""
    return float(unit_rows(x).std(axis=0).mean())


def alignment(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared distance between the unit vectors of two views of the same images (Wang & Isola 2020; lower is
    better: views of one image land together)."""
    return float(((unit_rows(a) - unit_rows(b)) ** 2).sum(axis=1).mean())


def uniformity(x: np.ndarray, t: float = 2.0, max_pairs: int = 2000) -> float:
    """log E exp(−t·‖u − v‖²) over pairs of unit vectors (Wang & Isola 2020; lower is better: spread over the
    sphere; 0 when collapsed)."""
    x = unit_rows(x)[:max_pairs]
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    iu = np.triu_indices(len(x), k=1)
    return float(np.log(np.mean(np.exp(-t * sq[iu])))) if len(iu[0]) else 0.0


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k nearest neighbours (cosine, itself excluded) that two embeddings of the same
    items have in common: how much a new encoder keeps the old one's notion of 'similar'."""
    def neighbours(x: np.ndarray) -> np.ndarray:
        x = unit_rows(x)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        kk = min(k, len(x) - 1)
        return np.argpartition(-sims, kk - 1, axis=1)[:, :kk]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(r) & set(s)) / na.shape[1] for r, s in zip(na, nb, strict=True)]))


def label_free(x: np.ndarray, x_view: np.ndarray) -> dict:
    """The label-free health figures of one encoder on a fixed sample: its vectors and those of second views."""
    return {"embedding_std": embedding_std(x), "effective_rank": effective_rank(x), "alignment": alignment(x, x_view),
            "uniformity": uniformity(x)}
