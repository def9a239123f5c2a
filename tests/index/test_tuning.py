"""Recall-targeted tuning: the search, the held-out split, the ground truth, and what a build stores (real FAISS)."""

from __future__ import annotations

import numpy as np
import pytest

from index import tuning
from index.vector_index import VectorIndex

V = "enc-v1"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mixture(n: int, d: int = 32, centers: int = 40, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """Clusters wide enough that an IVF index needs more than one probe for good recall."""
    rng = np.random.default_rng(seed)
    c = unit(rng.normal(size=(centers, d)))
    return unit(c[rng.integers(0, centers, n)] + spread * rng.normal(size=(n, d)) / np.sqrt(d) * 3)


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("threshold", [1, 2, 3, 7, 8, 9, 63, 64])
def test_smallest_passing_finds_the_first_value_reaching_the_target(threshold):
    value, recall, reached, tried = tuning.smallest_passing(lambda v: 1.0 if v >= threshold else 0.5, 1, 64, 0.9)
    assert (value, recall, reached) == (threshold, 1.0, True)
    assert len(tried) <= 2 * 7  # doubling then bisection, never a scan of the range


def test_unreachable_target_keeps_the_best_value_and_says_so():
    value, recall, reached, _ = tuning.smallest_passing(lambda v: min(v, 40) / 100, 1, 64, 0.95)
    assert not reached and recall == 0.4 and value == 64  # the best recall seen (40 first reached at the top)


def test_held_out_split_is_seeded_disjoint_complete_and_small():
    rest, held = tuning.held_out(5000, 1000, seed=3)
    again = tuning.held_out(5000, 1000, seed=3)[1]
    assert np.array_equal(held, again) and len(held) == 500  # at most a tenth of the rows
    assert not set(rest) & set(held) and sorted(set(rest) | set(held)) == list(range(5000))


def test_exact_neighbours_exclude_the_held_out_rows():
    x = mixture(600, seed=1)
    rest, held = tuning.held_out(len(x), 50, seed=0)
    got = tuning.exact_neighbours(x, held, k=10)
    expect = rest[brute_force(x[rest], x[held], 10)]
    assert np.array_equal(np.sort(got, axis=1), np.sort(expect, axis=1))


def test_recall_counts_shared_ids_per_row():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert tuning.recall_at_k(found, truth) == pytest.approx((0.5 + 1.0) / 2)


# ---------------------------------------------------------------------------------------------- with FAISS
def build(factory: str, x: np.ndarray, target: float | None) -> VectorIndex:
    return VectorIndex.build(x, [{"uri": f"i{i}"} for i in range(len(x))], V, factory, recall_target=target)


def held_out_recall(idx: VectorIndex, x: np.ndarray, **params) -> float:
    """The build's held-out recall measured again from outside: its held-out rows removed (as they were absent
    while it tuned), searched with other parameters, against brute force over the other rows."""
    rest, held = tuning.held_out(len(x))
    idx.remove(held)
    idx.set_search_params(**params)
    found = np.array([[h.id for h in row] for row in idx.search(x[held], 10, V)])
    return tuning.recall_at_k(found, rest[brute_force(x[rest], x[held], 10)])


def test_ivf_build_picks_the_smallest_nprobe_reaching_the_target():
    x = mixture(6000)
    idx = build("IVF64,Flat", x, 0.95)
    t = idx.tuning
    assert t["param"] == "nprobe" and t["reached"] and t["recall"] >= 0.95 and idx.nprobe == t["value"]
    assert len(idx) == len(x) and sorted(idx.metadata) == list(range(len(x)))  # the held-out rows were added too
    assert t["value"] > 1 and held_out_recall(idx, x, nprobe=t["value"] - 1) < 0.95
    assert held_out_recall(idx, x, nprobe=t["value"]) == pytest.approx(t["recall"], abs=1e-4)


def test_a_higher_target_never_gets_fewer_probes():
    x = mixture(6000, seed=2)
    low, high = build("IVF64,Flat", x, 0.8).nprobe, build("IVF64,Flat", x, 0.99).nprobe
    assert low <= high and high > 1


def test_hnsw_build_tunes_ef_search():
    x = mixture(3000, seed=4)
    idx = build("HNSW16", x, 0.95)
    assert idx.tuning["param"] == "efSearch" and idx.ef_search == idx.tuning["value"] >= 16
    assert idx.tuning["reached"] and idx.tuning["recall"] >= 0.95


def test_compressed_index_that_cannot_reach_the_target_says_so():
    x = mixture(4000, seed=5)
    t = build("IVF16,PQ4", x, 0.999).tuning  # 4 bytes per 32-d vector: far from exact
    assert not t["reached"] and t["recall"] < 0.999 and t["value"] >= 1


def test_exact_and_untuned_builds_store_no_tuning():
    x = mixture(2000, seed=6)
    assert build("Flat", x, 0.95).tuning is None and build("IVF16,Flat", x, None).tuning is None


def test_tuned_parameter_is_stored_and_applied_after_a_reload(tmp_path):
    x = mixture(6000, seed=7)
    idx = build("IVF64,Flat", x, 0.95)
    idx.save(tmp_path / "ix")
    back = VectorIndex.load(tmp_path / "ix")
    assert back.tuning == idx.tuning and back._inner().nprobe == idx.tuning["value"]
