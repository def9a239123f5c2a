"""The one set of metrics: weighted kNN, linear probe, raw pixels — one invariant each."""

import numpy as np
import pytest

from index.metrics import evaluate, knn_accuracy, pixel_features, score


def _clusters(n_per=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 16, dtype=np.float32) * 5
    emb = np.concatenate([c + rng.normal(0, 0.3, (n_per, 16)).astype(np.float32) for c in centres])
    return emb, np.repeat(np.arange(4), n_per)


def linear_probe_accuracy(tr, ytr, te, yte) -> float:
    return score(tr, ytr, te, yte).probe


def test_knn_is_perfect_on_separated_clusters():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    assert knn_accuracy(tr, ytr, te, yte, k=5) == 1.0


def test_knn_is_near_chance_on_shuffled_labels():
    tr, ytr = _clusters(n_per=50, seed=0)
    te, yte = _clusters(n_per=50, seed=1)
    acc = knn_accuracy(tr, np.random.default_rng(0).permutation(ytr), te, yte, k=5)
    assert acc < 0.5


def test_knn_weights_votes_by_similarity():
    tr = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], np.float32)
    ytr = np.array([0, 1, 1])
    # k=3: one very close neighbour of class 0 outweighs two far ones of class 1 at T=0.07
    assert knn_accuracy(tr, ytr, np.array([[1.0, 0.05]], np.float32), np.array([0]), k=3) == 1.0


def test_linear_probe_separates_clusters():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    assert linear_probe_accuracy(tr, ytr, te, yte) == 1.0


def test_pixel_features_have_no_zero_rows():
    flat = np.full((2, 4, 4, 3), 7, dtype=np.uint8)
    assert (np.linalg.norm(pixel_features(flat), axis=1) > 0).all()


def test_score_is_the_accuracy_of_the_classifiers_it_returns():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    s = score(tr, ytr, te, np.roll(yte, 7))  # wrong labels for some test items: accuracy below 1
    for acc, model in ((s.knn, s.knn_model), (s.probe, s.probe_model)):
        assert acc == float((model.predict(te) == np.roll(yte, 7)).mean()) and acc < 1.0


def test_evaluate_scores_every_embedder_and_raw_pixels_alike():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # the same features as raw pixels
    report = evaluate({"same": flat}, images[:40], labels[:40], images[40:], labels[40:], k=5)
    assert set(report) == {"same", "raw_pixels"} and report["same"] == report["raw_pixels"]


def test_grayscale_pixels_count_once_and_colour_pixels_thrice():
    gray = np.repeat(np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8), 3, axis=-1)
    colour = gray.copy()
    colour[0, 0, 0, 1] ^= 1
    assert pixel_features(gray).shape == (3, 784) and pixel_features(colour).shape == (3, 3 * 784)


def test_knn_at_several_k_equals_one_k_at_a_time():
    from index.metrics import knn_accuracies

    tr, ytr = _clusters(n_per=50, seed=0)
    te, yte = _clusters(n_per=50, seed=1)
    noisy = np.random.default_rng(1).permutation(ytr[:60])
    ytr = np.concatenate([noisy, ytr[60:]])
    both = knn_accuracies(tr, ytr, te, yte, (3, 40))
    assert both == {3: knn_accuracy(tr, ytr, te, yte, k=3), 40: knn_accuracy(tr, ytr, te, yte, k=40)}


def test_scores_carry_standard_errors_and_probe_iterations():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    d = score(tr, ytr, te, np.roll(yte, 3)).as_dict()
    p, n = d["knn"], d["n_test"]
    assert d["se"]["knn"] == pytest.approx((p * (1 - p) / n) ** 0.5) and n == 80
    assert d["probe_iterations"] > 0 and d["probe_converged"] and {"knn_200", "dim"} <= set(d)


def test_label_free_figures_tell_a_collapsed_embedding_from_a_healthy_one():
    from index.metrics import label_free, neighbour_agreement

    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(300, 32))
    views = healthy + rng.normal(scale=0.1, size=healthy.shape)
    collapsed = np.ones((300, 32)) + rng.normal(scale=1e-6, size=(300, 32))
    h, c = label_free(healthy, views), label_free(collapsed, collapsed)
    assert h["effective_rank"] > 20 > 2 > c["effective_rank"] and c["embedding_std"] < 1e-5 < h["embedding_std"]
    assert c["uniformity"] > -0.01 > h["uniformity"] and h["alignment"] < 0.1
    assert neighbour_agreement(healthy, views) > 0.5 > neighbour_agreement(healthy, rng.normal(size=(300, 32)))
