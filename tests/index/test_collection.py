"""The stored collection: append-only items, content-addressed uploads, URIs that resolve to bytes (and, through the
shared contract, to pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from index.collection import Collection, CollectionError, Item
from serving.contract.sources import read_uri


def png_bytes(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_items_come_back_in_order_one_per_uri(tmp_path):
    Collection(tmp_path).add([Item("a", "x"), Item("b", None)])
    Collection(tmp_path).add([Item("a", "y")])
    got = list(Collection(tmp_path).items())
    assert [(i.uri, i.label) for i in got] == [("a", "y"), ("b", None)] and all(i.added_at for i in got)


def test_a_torn_last_line_is_skipped(tmp_path):
    Collection(tmp_path).add([Item("a")])
    with open(tmp_path / "items.jsonl", "a") as fh:
        fh.write('{"uri": "half')
    assert [i.uri for i in Collection(tmp_path).items()] == ["a"]


def test_uploaded_bytes_are_content_addressed(tmp_path):
    data = png_bytes()
    store = Collection(tmp_path)
    uri = store.store_bytes(data)
    assert uri == store.store_bytes(data) and store.read_bytes(uri) == data


def test_dataset_uris_resolve_to_the_dataset_pixels(fmnist_root, fmnist_test, tmp_path):
    got = read_uri("fashion-mnist:test/5", 28, Collection(tmp_path), data_root=str(fmnist_root))
    assert np.array_equal(got, fmnist_test.images[5])


def test_file_uris_resolve_through_the_image_contract(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(1))
    assert read_uri(f"file://{tmp_path / 'x.png'}", 16, Collection(tmp_path)).shape == (16, 16, 3)


@pytest.mark.parametrize("uri,match", [
    ("sha256:" + "0" * 64, "no stored image"),
    ("relative/path.png", "cannot resolve"),
    ("/definitely/not/here.png", "cannot read"),
])
def test_unresolvable_uris_raise_clear_errors(tmp_path, uri, match):
    with pytest.raises(CollectionError, match=match):
        Collection(tmp_path).read_bytes(uri)


def test_items_need_a_uri(tmp_path):
    with pytest.raises(CollectionError, match="without a uri"):
        Collection(tmp_path).add([Item("")])


def test_removed_items_stay_out_until_added_again(tmp_path):
    store = Collection(tmp_path)
    store.add([Item("a", "x"), Item("b", "y")])
    store.remove(["a"])
    assert [i.uri for i in store.items()] == ["b"]
    store.add([Item("a", "z")])
    assert [(i.uri, i.label) for i in store.items()] == [("b", "y"), ("a", "z")]
