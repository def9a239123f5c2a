"""VectorIndex: exact neighbours, ids and metadata through remove/save/load, version refusal."""

from __future__ import annotations

import numpy as np
import pytest

from index.vector_index import IndexStoreError, VectorIndex, VersionMismatchError

V = "enc-v1"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 32, centers: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = unit(rng.normal(size=(centers, d)))
    return unit(c[rng.integers(0, centers, n)] + 0.15 * rng.normal(size=(n, d)))


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def build(factory: str, x: np.ndarray) -> VectorIndex:
    idx = VectorIndex(x.shape[1], V, factory)
    idx.add(x, [{"uri": f"item-{i}", "label": i % 3} for i in range(len(x))], V)
    return idx


def test_flat_search_returns_the_exact_neighbours():
    x = clustered(500)
    q = clustered(20, seed=1)
    hits = build("Flat", x).search(q, 5, V)
    assert [[h.id for h in row] for row in hits] == brute_force(x, q, 5).tolist()


def test_scores_are_cosine_similarities():
    x = clustered(100)
    hits = build("Flat", x).search(x[:3] * 7.0, 1, V)  # scaled queries: cosine ignores length
    assert [h[0].id for h in hits] == [0, 1, 2] and all(abs(h[0].score - 1.0) < 1e-5 for h in hits)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16"])
def test_approximate_indexes_find_most_true_neighbours(factory):
    x = clustered(4000)
    q = clustered(50, seed=2)
    idx = build(factory, x)
    idx.set_search_params(nprobe=8, ef_search=256)
    got = [[h.id for h in row] for row in idx.search(q, 10, V)]
    truth = brute_force(x, q, 10)
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)])
    assert recall >= 0.9


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,PQ4", "HNSW16"])
def test_remaining_items_keep_their_ids_after_a_remove(factory):
    x = clustered(600, seed=5)
    idx = build(factory, x)
    idx.set_search_params(nprobe=8, ef_search=256)
    idx.remove(list(range(0, 300, 3)))
    keep = [i for i in range(600) if i % 3 or i >= 300]
    top = [row[0].id for row in idx.search(x[keep], 1, V)]
    assert np.mean(np.array(top) == np.array(keep)) > 0.95


def test_ids_are_stable_across_adds_and_removes():
    idx = VectorIndex(32, V, "Flat")
    first = idx.add(clustered(10), [{"uri": f"a{i}"} for i in range(10)], V)
    idx.remove(first[:5])
    second = idx.add(clustered(3, seed=3), [{"uri": f"b{i}"} for i in range(3)], V)
    assert first.tolist() == list(range(10)) and second.tolist() == [10, 11, 12] and len(idx) == 8


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_removed_items_are_never_returned(factory):
    x = clustered(1000)
    idx = build(factory, x)
    assert idx.remove([0, 1, 2, 999999]) == 3
    hits = idx.search(x[:3], 5, V)
    assert all(h.id not in (0, 1, 2) for row in hits for h in row) and all(len(row) == 5 for row in hits)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_save_load_round_trip_keeps_ids_metadata_and_results(tmp_path, factory):
    x = clustered(800)
    idx = build(factory, x)
    idx.remove([5, 6])
    idx.set_search_params(nprobe=4, ef_search=40)
    idx.save(tmp_path / "ix")
    back = VectorIndex.load(tmp_path / "ix")
    q = x[:10]
    same = [[(h.id, h.metadata) for h in row] for row in back.search(q, 4, V)]
    assert same == [[(h.id, h.metadata) for h in row] for row in idx.search(q, 4, V)]
    assert (back.factory, back.encoder_version, back.nprobe, back.ef_search, back.next_id) == (
        factory, V, idx.nprobe, idx.ef_search, 800)


def test_search_params_survive_a_reload(tmp_path):
    idx = build("IVF16,Flat", clustered(1000))
    idx.set_search_params(nprobe=7)
    idx.save(tmp_path / "ix")
    assert VectorIndex.load(tmp_path / "ix")._inner().nprobe == 7


def test_saving_twice_keeps_one_snapshot(tmp_path):
    idx = build("Flat", clustered(50))
    idx.save(tmp_path / "ix")
    idx.add(clustered(5, seed=9), [{}] * 5, V)
    idx.save(tmp_path / "ix")
    assert len(list((tmp_path / "ix").glob("snap-*"))) == 1 and len(VectorIndex.load(tmp_path / "ix")) == 55


def test_metadata_gets_an_added_at_stamp():
    idx = build("Flat", clustered(2))
    assert idx.search(clustered(1), 1, V)[0][0].metadata.keys() >= {"uri", "label", "added_at"}


def test_vectors_from_another_encoder_are_refused():
    idx = build("Flat", clustered(10))
    with pytest.raises(VersionMismatchError, match="'enc-v2'.*'enc-v1'"):
        idx.add(clustered(1), [{}], "enc-v2")


def test_queries_from_another_encoder_are_refused():
    with pytest.raises(VersionMismatchError, match="rebuild the index"):
        build("Flat", clustered(10)).search(clustered(1), 3, "enc-v2")


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 31), np.float32), r"shape \[N, 32\]"),
    (np.full((1, 32), np.nan, np.float32), "NaN"),
    (np.zeros((1, 32), np.float32), "all-zero"),
])
def test_bad_vectors_raise_clear_errors(bad, match):
    with pytest.raises(IndexStoreError, match=match):
        VectorIndex(32, V, "Flat").add(bad, [{}] * len(bad), V)


def test_metadata_count_must_match():
    with pytest.raises(IndexStoreError, match="2 vectors but 1 metadata"):
        VectorIndex(32, V, "Flat").add(clustered(2), [{}], V)


def test_ivf_first_add_too_small_to_train_raises():
    with pytest.raises(IndexStoreError, match="at least 64 vectors"):
        VectorIndex(32, V, "IVF64,Flat").add(clustered(10), [{}] * 10, V)


def test_loading_a_missing_index_raises(tmp_path):
    with pytest.raises(IndexStoreError, match="no index"):
        VectorIndex.load(tmp_path / "nothing")


def test_auto_build_picks_flat_for_small_sets():
    assert VectorIndex.build(clustered(100), [{}] * 100, V).factory == "Flat"


def test_empty_index_returns_no_hits():
    assert VectorIndex(32, V).search(clustered(2), 3, V) == [[], []]


# ---------------------------------------------------------------------------------------------- memory-mapped loading
def _hits(idx: VectorIndex, q: np.ndarray) -> list:
    return [[(h.id, round(h.score, 5)) for h in row] for row in idx.search(q, 5, V)]


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_a_memory_mapped_index_answers_like_a_read_one(tmp_path, factory):
    x = clustered(800)
    idx = build(factory, x)
    idx.remove([3, 4])
    idx.set_search_params(nprobe=4, ef_search=40)
    idx.save(tmp_path / "ix")
    mapped, read = VectorIndex.load(tmp_path / "ix", mmap=True), VectorIndex.load(tmp_path / "ix", mmap=False)
    assert mapped.mmapped and not read.mmapped
    assert _hits(mapped, x[:20]) == _hits(read, x[:20]) and mapped.tombstones == read.tombstones
    assert np.array_equal(mapped.vectors([0, 7]), read.vectors([0, 7]))


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_writes_to_a_memory_mapped_index_read_it_into_memory_first(tmp_path, factory):
    """FAISS aborts the process on a write to a mapped index: the first write must copy it into memory."""
    x = clustered(600)
    build(factory, x[:500]).save(tmp_path / "ix")
    idx = VectorIndex.load(tmp_path / "ix", mmap=True)
    new = idx.add(x[500:], [{"uri": f"n{i}"} for i in range(100)], V)
    assert not idx.mmapped and idx.remove([0, 1]) == 2
    top = [row[0].id for row in idx.search(x[500:510], 1, V)]
    assert top == new[:10].tolist() and all(h.id not in (0, 1) for row in idx.search(x[:2], 5, V) for h in row)
    idx.save(tmp_path / "ix")
    assert len(VectorIndex.load(tmp_path / "ix", mmap=True)) == 598


def test_a_mapped_index_outlives_its_replaced_snapshot(tmp_path):
    """A later save deletes the snapshot a mapping reads: the mapping keeps working, and a write copies it."""
    x = clustered(300)
    build("IVF8,Flat", x).save(tmp_path / "ix")
    mapped = VectorIndex.load(tmp_path / "ix", mmap=True)
    VectorIndex.load(tmp_path / "ix", mmap=False).save(tmp_path / "ix")  # the old snap-* directory is gone
    before = _hits(mapped, x[:5])
    mapped.add(clustered(10, seed=4), [{}] * 10, V)
    assert _hits(mapped, x[:5]) == before and len(mapped) == 310 and not mapped.mmapped


def test_large_snapshots_are_mapped_by_default(tmp_path, monkeypatch):
    from index import snapshot

    build("Flat", clustered(200)).save(tmp_path / "ix")
    assert not VectorIndex.load(tmp_path / "ix").mmapped  # a few kB: read
    monkeypatch.setattr(snapshot, "MMAP_MIN_BYTES", 1)
    assert VectorIndex.load(tmp_path / "ix").mmapped


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_stored_vectors_are_found_by_id_without_a_reverse_map(factory):
    """Flat/HNSW keep only the id of each position (IDMap, not IDMap2's ~50 MB per million hash map): a vector is
    found by its id after removes, and in a tuned build whose held-out rows were added last (ids not ascending)."""
    import faiss

    x = clustered(3000)
    idx = VectorIndex.build(x, [{"uri": f"u{i}"} for i in range(len(x))], V, factory=factory)
    assert isinstance(idx._index, faiss.IndexIDMap) and not isinstance(idx._index, faiss.IndexIDMap2)
    want = np.array([2999, 0, 1500, 17, 42])
    np.testing.assert_allclose(idx.vectors(want), x[want], atol=1e-6)
    if factory == "Flat":
        idx.remove([0, 1, 2])
        np.testing.assert_allclose(idx.vectors([3, 2999]), x[[3, 2999]], atol=1e-6)
        with pytest.raises(IndexStoreError, match="no vector with id 1"):
            idx.vectors([5, 1])
