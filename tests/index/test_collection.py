"""The stored collection: append-only items, content-addressed uploads, URIs that resolve to pixels."""

from __future__ import annotations

import numpy as np
import pytest

from serving.collection import (
    CollectionError,
    Item,
    add_items,
    iter_items,
    load_image,
    load_image_bytes,
    store_image_bytes,
)


def png_bytes(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_items_come_back_in_order_one_per_uri(tmp_path):
    add_items([Item("a", "x"), {"uri": "b", "label": None}], root=tmp_path)
    add_items([Item("a", "y")], root=tmp_path)
    got = list(iter_items(tmp_path))
    assert [(i.uri, i.label) for i in got] == [("a", "y"), ("b", None)] and all(i.added_at for i in got)


def test_a_torn_last_line_is_skipped(tmp_path):
    add_items([Item("a")], root=tmp_path)
    with open(tmp_path / "items.jsonl", "a") as fh:
        fh.write('{"uri": "half')
    assert [i.uri for i in iter_items(tmp_path)] == ["a"]


def test_uploaded_bytes_are_content_addressed(tmp_path):
    data = png_bytes()
    uri = store_image_bytes(data, root=tmp_path)
    assert uri == store_image_bytes(data, root=tmp_path) and load_image_bytes(uri, root=tmp_path) == data


def test_dataset_uris_resolve_to_the_dataset_pixels(fmnist_root, fmnist_test):
    got = load_image("fashion-mnist:test/5", 28, data_root=str(fmnist_root))
    assert np.array_equal(got, fmnist_test.images[5])


def test_file_uris_resolve_through_the_image_contract(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(1))
    assert load_image(f"file://{tmp_path / 'x.png'}", 16).shape == (16, 16, 3)


@pytest.mark.parametrize("uri,match", [
    ("sha256:" + "0" * 64, "no stored image"),
    ("relative/path.png", "cannot resolve"),
    ("/definitely/not/here.png", "cannot read"),
])
def test_unresolvable_uris_raise_clear_errors(tmp_path, uri, match):
    with pytest.raises(CollectionError, match=match):
        load_image_bytes(uri, root=tmp_path)


def test_items_need_a_uri(tmp_path):
    with pytest.raises(CollectionError, match="without a uri"):
        add_items([Item("")], root=tmp_path)


def test_removed_items_stay_out_until_added_again(tmp_path):
    from serving.collection import remove_items

    add_items([Item("a", "x"), Item("b", "y")], root=tmp_path)
    remove_items(["a"], root=tmp_path)
    assert [i.uri for i in iter_items(tmp_path)] == ["b"]
    add_items([Item("a", "z")], root=tmp_path)
    assert [(i.uri, i.label) for i in iter_items(tmp_path)] == [("b", "y"), ("a", "z")]
