"""The chooser is pure: a grid of (n, d, budget) checked without faiss."""

from __future__ import annotations

import pytest

from index.chooser import IndexChoiceError, choose_index, default_nlist, estimate_memory, parse_factory

GiB = 1024**3
GRID_N = [0, 1, 1_000, 50_000, 100_000, 1_000_000, 10_000_000]
GRID_D = [64, 256, 512]
GRID_BUDGET = [256 * 1024**2, 4 * GiB, 64 * GiB]


@pytest.mark.parametrize("budget", GRID_BUDGET)
@pytest.mark.parametrize("d", GRID_D)
@pytest.mark.parametrize("n", GRID_N)
def test_every_choice_fits_the_budget(n, d, budget):
    try:
        ranked = choose_index(n, d, budget)
    except IndexChoiceError:
        assert all(estimate_memory(f, n, d) > budget for f in ("Flat", f"IVF{default_nlist(n)},PQ4"))
        return
    assert ranked and all(estimate_memory(f, n, d) <= budget for f in ranked)


@pytest.mark.parametrize("n", [0, 10, 10_000, 50_000])
def test_small_collections_get_exact_search_first(n):
    assert choose_index(n, 256)[0] == "Flat"


@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_large_collections_get_an_ivf_index_first(n):
    assert choose_index(n, 256, 64 * GiB)[0].startswith("IVF")


def test_compressed_index_when_raw_vectors_do_not_fit():
    n, d = 10_000_000, 512  # 20 GB of float32
    first = choose_index(n, d, 4 * GiB)[0]
    assert parse_factory(first).ivf_storage == "PQ"


def test_nothing_fits_raises_with_sizes_in_message():
    with pytest.raises(IndexChoiceError, match="MiB"):
        choose_index(10_000_000, 512, 1024**2)


@pytest.mark.parametrize("d,n_flat,n_ann", [(64, 200_000, 300_000), (256, 50_000, 60_000), (512, 25_000, 30_000)])
def test_exact_search_limit_follows_the_per_query_cost(d, n_flat, n_ann):
    assert choose_index(n_flat, d)[0] == "Flat" and choose_index(n_ann, d)[0] != "Flat"


def test_hnsw_can_be_excluded():
    assert not any(f.startswith("HNSW") for f in choose_index(1_000_000, 256, 64 * GiB, allow_hnsw=False))


@pytest.mark.parametrize("n", [1_000, 100_000, 1_000_000, 50_000_000])
def test_nlist_leaves_enough_training_points(n):
    nlist = default_nlist(n)
    assert nlist >= 1 and (nlist == 1 or n // nlist >= 39)


def test_estimate_orders_by_compression():
    n, d = 1_000_000, 256
    assert estimate_memory("IVF4096,PQ32", n, d) < estimate_memory("IVF4096,Flat", n, d) < estimate_memory(
        "HNSW32", n, d)


@pytest.mark.parametrize("bad", ["IVF,Flat", "LSH", "PCA64,Flat", ""])
def test_unknown_factory_strings_raise(bad):
    with pytest.raises(IndexChoiceError, match="unsupported factory"):
        parse_factory(bad)


@pytest.mark.parametrize("n,d", [(-1, 64), (10, 0)])
def test_bad_sizes_raise(n, d):
    with pytest.raises(IndexChoiceError):
        choose_index(n, d)


@pytest.mark.parametrize("n", [200_000, 1_000_000, 4_000_000])
def test_nlist_is_a_few_lists_per_sqrt_n(n):
    """~4·sqrt(n) (FAISS: 4-16·sqrt(n)): at sqrt(n), 1M clustered vectors needed nprobe 128 for recall@10 0.95."""
    nlist = default_nlist(n)
    assert 2 * n**0.5 <= nlist <= 8 * n**0.5 and nlist & (nlist - 1) == 0
