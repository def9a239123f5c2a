"""LinearProbe and KnnClassifier: beat chance on a separable set, round-trip, refuse another encoder."""

from __future__ import annotations

import numpy as np
import pytest

from index.knn import KnnClassifier
from index.probe import LinearProbe
from index.vector_index import IndexStoreError, VersionMismatchError

V = "enc-v1"
CLASSES = ["a", "b", "c", "d"]


def separable(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four classes around four directions of a 16-d sphere, with enough noise to make neighbours differ."""
    rng = np.random.default_rng(seed)
    centers = np.eye(16, dtype=np.float32)[:4] * 2.0
    y = rng.integers(0, 4, n)
    x = centers[y] + rng.normal(scale=0.6, size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.fixture(scope="module")
def data():
    return separable(600), separable(200, seed=1)


def accuracy(model, x, y) -> float:
    return float((model.predict_proba(x).argmax(1) == y).mean())


def test_linear_probe_beats_chance(data):
    (xtr, ytr), (xte, yte) = data
    assert accuracy(LinearProbe.fit(xtr, ytr, CLASSES, V), xte, yte) > 0.8


def test_knn_beats_chance(data):
    (xtr, ytr), (xte, yte) = data
    assert accuracy(KnnClassifier(xtr, ytr, CLASSES, k=20), xte, yte) > 0.8


@pytest.mark.parametrize("make", ["probe", "knn"])
def test_probabilities_are_distributions(data, make):
    (xtr, ytr), (xte, _) = data
    model = LinearProbe.fit(xtr, ytr, CLASSES) if make == "probe" else KnnClassifier(xtr, ytr, CLASSES)
    p = model.predict_proba(xte)
    assert p.shape == (len(xte), 4) and np.allclose(p.sum(1), 1.0) and (p >= 0).all()


def test_probe_gives_unseen_classes_no_probability(data):
    (xtr, ytr), (xte, _) = data
    keep = ytr < 3
    p = LinearProbe.fit(xtr[keep], ytr[keep], CLASSES).predict_proba(xte)
    assert p[:, 3].max() < 1e-6


def test_binary_probe_matches_two_class_labels():
    x, y = separable(300)
    keep = y < 2
    probe = LinearProbe.fit(x[keep], y[keep], ["a", "b"])
    assert (probe.predict(x[keep]) == y[keep]).mean() > 0.9


def test_probe_save_load_round_trip(tmp_path, data):
    (xtr, ytr), (xte, _) = data
    probe = LinearProbe.fit(xtr, ytr, CLASSES, V)
    probe.save(tmp_path)
    back = LinearProbe.load(tmp_path, V)
    assert back.classes == CLASSES and np.allclose(back.predict_proba(xte), probe.predict_proba(xte))


def test_knn_save_load_round_trip(tmp_path, data):
    (xtr, ytr), (xte, _) = data
    knn = KnnClassifier(xtr, ytr, CLASSES, k=7, temperature=0.1, encoder_version=V)
    knn.save(tmp_path)
    back = KnnClassifier.load(tmp_path, V)
    assert (back.k, back.temperature) == (7, 0.1) and np.allclose(back.predict_proba(xte), knn.predict_proba(xte))


@pytest.mark.parametrize("cls", [LinearProbe, KnnClassifier])
def test_loading_for_another_encoder_is_refused(tmp_path, data, cls):
    (xtr, ytr), _ = data
    model = LinearProbe.fit(xtr, ytr, CLASSES, V) if cls is LinearProbe else KnnClassifier(xtr, ytr, CLASSES,
                                                                                             encoder_version=V)
    model.save(tmp_path)
    with pytest.raises(VersionMismatchError, match="byol probe fit"):
        cls.load(tmp_path, "enc-v2")


@pytest.mark.parametrize("cls", [LinearProbe, KnnClassifier])
def test_loading_from_an_empty_dir_raises(tmp_path, cls):
    with pytest.raises(IndexStoreError, match="no "):
        cls.load(tmp_path, V)


def test_labels_outside_the_classes_are_refused():
    x, _ = separable(10)
    with pytest.raises(IndexStoreError, match=r"labels must lie in \[0, 3\]"):
        KnnClassifier(x, np.full(10, 4), CLASSES)


def test_probe_rejects_wrong_dim(data):
    (xtr, ytr), _ = data
    with pytest.raises(IndexStoreError, match=r"\[N, 16\]"):
        LinearProbe.fit(xtr, ytr, CLASSES).predict_proba(np.zeros((1, 8)))


def test_knn_votes_do_not_depend_on_how_the_queries_are_chunked_across_threads():
    """Chunks are matrix products of other shapes, and a BLAS may sum them in another order (OpenBLAS's AVX2
    kernels do): the votes agree to float32 round-off, the predicted classes exactly."""
    from index.knn import knn_votes, unit_rows

    rng = np.random.default_rng(3)
    bank, queries = unit_rows(rng.normal(size=(500, 16))), unit_rows(rng.normal(size=(300, 16)))
    labels = rng.integers(0, 5, 500)
    whole = knn_votes(bank, labels, queries, (20, 200), 0.07, 5, chunk=1024)
    chunked = knn_votes(bank, labels, queries, (20, 200), 0.07, 5, chunk=7)  # 43 chunks over several threads
    for k in (20, 200):
        assert whole[k].sum(axis=1).min() >= 1.0  # each query's best neighbour votes with weight exp(0) = 1
        np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-5, atol=1e-9)
        assert np.array_equal(chunked[k].argmax(axis=1), whole[k].argmax(axis=1))


def test_a_warm_started_probe_reaches_the_same_optimum_in_fewer_iterations(data):
    """The demo's probe step starts from the eval's probe of the same encoder (vectors equal to ~1e-7)."""
    (xtr, ytr), (xte, yte) = data
    cold = LinearProbe.fit(xtr, ytr, CLASSES)
    nearly = xtr + np.random.default_rng(3).normal(scale=1e-7, size=xtr.shape).astype(np.float32)
    warm = LinearProbe.fit(nearly, ytr, CLASSES, init=cold)
    assert cold.converged and warm.converged and warm.iterations < cold.iterations / 4, (warm.iterations,
                                                                                         cold.iterations)
    np.testing.assert_allclose(warm.predict_proba(xte), cold.predict_proba(xte), atol=1e-3)


def test_a_probe_of_other_dimensions_is_no_warm_start(data):
    (xtr, ytr), _ = data
    other = LinearProbe.fit(xtr[:, :8], ytr, CLASSES)
    assert LinearProbe.fit(xtr, ytr, CLASSES, init=other).iterations == LinearProbe.fit(xtr, ytr, CLASSES).iterations


def test_a_warm_start_at_the_optimum_is_converged_in_no_iterations(data):
    """Judged on the gradient there, not on scipy's flag (which calls a line search from the optimum abnormal)."""
    (xtr, ytr), (xte, _) = data
    cold = LinearProbe.fit(xtr, ytr, CLASSES)
    again = LinearProbe.fit(xtr, ytr, CLASSES, init=cold)
    assert (again.iterations, again.converged) == (0, True)
    np.testing.assert_allclose(again.predict_proba(xte), cold.predict_proba(xte), atol=1e-9)


def test_a_probe_stopped_early_says_it_did_not_converge(data):
    (xtr, ytr), _ = data
    early = LinearProbe.fit(xtr, ytr, CLASSES, max_iter=2)
    assert early.iterations == 2 and not early.converged


def correlated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-like features: 24 noisy mixtures of 6 latent factors (strongly correlated), one nearly constant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    latent = np.eye(4, 6)[y] * 1.5 + rng.normal(size=(n, 6))
    x = latent @ rng.normal(size=(6, 24)) + 0.05 * rng.normal(size=(n, 24))
    x[:, -1] = (rng.random(n) < 0.01) * 3.0
    return x.astype(np.float32), y


def reference_fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The probe's problem solved independently: float64, no change of variables, tight tolerances."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.eye(4)[y]

    def f(wb):
        w, b = wb[: d * 4].reshape(d, 4), wb[d * 4:]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean() + 0.5 * l2 * (w ** 2).sum()
        return loss, np.concatenate([(x.T @ (p - onehot) / n + l2 * w).ravel(), (p - onehot).mean(axis=0)])

    res = minimize(f, np.zeros(d * 4 + 4), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10000, "gtol": 1e-10, "ftol": 1e-15})
    return res.x[: d * 4].reshape(d, 4).T, res.x[d * 4:], float(res.fun)


def test_the_preconditioned_fit_reaches_the_problems_own_optimum():
    """L-BFGS runs in whitened coordinates: the optimum must still be that of the cross-entropy + l2 in W."""
    from index.probe import DEFAULT_L2

    x, y = correlated(800)
    probe = LinearProbe.fit(x, y, CLASSES)
    xs = (x.astype(np.float64) - probe.mean) / probe.scale
    coef, intercept, best = reference_fit(xs, y, DEFAULT_L2)
    z = xs @ probe.coef.T + probe.intercept
    ce = -np.log(np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    ours = ce[np.arange(len(y)), y].mean() + 0.5 * DEFAULT_L2 * (probe.coef ** 2).sum()
    assert probe.converged and abs(ours - best) <= 1e-6 * best, (ours, best)
    np.testing.assert_allclose(probe.coef, coef, atol=2e-3)
    np.testing.assert_allclose(probe.intercept, intercept, atol=2e-3)
