"""The one write path (``index.writes``): the collection is written before the index, removals are recorded,
a build appears complete, and reconcile brings an index in line with the collection."""

from __future__ import annotations

import numpy as np
import pytest

from index import writes
from index.collection import Collection, Item
from index.durable import DurableIndex
from index.errors import IndexStoreError, VersionMismatchError
from index.vector_index import VectorIndex

DIM, VERSION = 8, "v1"


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture()
def store(tmp_path):
    return Collection(tmp_path / "collection")


@pytest.fixture()
def index(tmp_path):
    with DurableIndex.open(tmp_path / "index", dim=DIM, encoder_version=VERSION, factory="Flat", create=True) as d:
        yield d


def test_add_records_the_items_then_indexes_them(index, store):
    ids = writes.add(index, store, vecs(2), [{"uri": "/a.png", "label": "x"}, {"uri": "/b.png"}], VERSION)
    assert [(i.uri, i.label) for i in store.items()] == [("/a.png", "x"), ("/b.png", None)]
    assert [index.metadata(int(i))["uri"] for i in ids] == ["/a.png", "/b.png"]


def test_a_failed_index_write_leaves_a_recorded_item_never_an_unrecorded_indexed_one(index, store):
    with pytest.raises(VersionMismatchError):
        writes.add(index, store, vecs(1), [{"uri": "/c.png"}], "another-version")
    assert [i.uri for i in store.items()] == ["/c.png"] and len(index) == 0


def test_uploads_are_stored_by_content_and_indexed_under_their_hash(index, store):
    (i,) = writes.add_images(index, store, vecs(1), [b"image bytes"], ["shoe"], VERSION)
    uri = index.metadata(int(i))["uri"]
    assert uri.startswith("sha256:") and store.read_bytes(uri) == b"image bytes"
    assert index.metadata(int(i))["label"] == "shoe"


def test_remove_is_recorded_in_the_collection(index, store):
    ids = writes.add(index, store, vecs(2), [{"uri": "/a.png"}, {"uri": "/b.png"}], VERSION)
    assert writes.remove(index, store, [int(ids[0]), 999]) == 1
    assert [i.uri for i in store.items()] == ["/b.png"] and index.metadata(int(ids[0])) is None


def test_publish_records_the_items_and_refuses_to_overwrite_without_force(tmp_path, store):
    built = VectorIndex.build(vecs(3), [{"uri": f"/{n}.png"} for n in "abc"], VERSION, "Flat")
    target = tmp_path / "published"
    writes.publish(built, target, store)
    assert DurableIndex.exists(target) and {i.uri for i in store.items()} == {"/a.png", "/b.png", "/c.png"}
    with pytest.raises(IndexStoreError, match="--force"):
        writes.publish(built, target, store)
    smaller = VectorIndex.build(vecs(1), [{"uri": "/z.png"}], VERSION, "Flat")
    writes.publish(smaller, target, store, force=True, record=False)
    assert len(VectorIndex.load(target)) == 1 and "/z.png" not in {i.uri for i in store.items()}


def test_reconcile_adds_what_the_index_lacks_and_drops_what_was_removed(index, store):
    writes.add(index, store, vecs(2), [{"uri": "/keep.png"}, {"uri": "/gone.png"}], VERSION)
    store.remove(["/gone.png"])
    store.add([Item("/new.png", "n"), Item("/unreadable.png")])

    def embed(items):
        readable = [it for it in items if it.uri != "/unreadable.png"]
        return vecs(len(readable), seed=5), readable

    assert writes.reconcile(index, store, embed, VERSION) == {"added": 1, "removed": 1}
    assert sorted(m["uri"] for _, m in index.items()) == ["/keep.png", "/new.png"]
