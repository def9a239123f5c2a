"""Collection URIs → bytes and pixels through the shared contract, for every kind of URI an index holds."""

from __future__ import annotations

import numpy as np
import pytest

from index.collection import Collection
from serving.contract.image import encode_png, load
from serving.contract.sources import read_items, read_uri, read_uri_bytes


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    (photos / "a.png").write_bytes(encode_png(pixels))
    return Collection(tmp_path / "collection"), tmp_path, encode_png(pixels)


def test_read_uri_bytes_serves_every_uri_kind(store):
    collection, root, data = store
    [folder_uri] = collection.folder_uris([root / "photos" / "nested" / "a.png"], root=root / "photos")
    upload_uri = collection.store_bytes(data)
    for uri in (folder_uri, upload_uri, str(root / "photos" / "nested" / "a.png"),
                f"file://{root / 'photos' / 'nested' / 'a.png'}"):
        assert read_uri_bytes(uri, collection) == data, uri


def test_dataset_items_come_back_as_png_bytes(fmnist_root, fmnist_test, tmp_path):
    got = read_uri_bytes("fashion-mnist:test/3", Collection(tmp_path), data_root=str(fmnist_root))
    assert np.array_equal(load(got, 28), fmnist_test.images[3])


def test_a_rebuild_reads_folder_items_like_any_other(store):
    from index.collection import Item

    collection, root, data = store
    [uri] = collection.folder_uris([root / "photos" / "nested" / "a.png"], root=root / "photos")
    got = read_items([Item(uri, "x"), Item("folder:photos/missing.png", "y")], 16, collection)
    assert len(got) == 1 and got.skipped == 1 and got.uris == [uri]
    assert np.array_equal(read_uri(uri, 16, collection), load(data, 16))
