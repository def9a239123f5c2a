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


# ---------------------------------------------------------------------------------------------- folder roots
def test_folder_files_get_relative_uris_that_resolve_back_to_their_bytes(tmp_path):
    photos = tmp_path / "srv" / "photos"
    (photos / "a" / "b").mkdir(parents=True)
    (photos / "a" / "b" / "x.png").write_bytes(png_bytes(2))
    store = Collection(tmp_path / "collection")
    [uri] = store.folder_uris([photos / "a" / "b" / "x.png"], root=photos)
    assert uri == "folder:photos/a/b/x.png" and str(tmp_path) not in uri
    assert Collection(tmp_path / "collection").read_bytes(uri) == png_bytes(2)  # a fresh object reads roots.json


def test_two_folders_of_one_name_get_two_roots_and_a_known_folder_keeps_its_name(tmp_path):
    store = Collection(tmp_path / "c")
    first, second = tmp_path / "x" / "photos", tmp_path / "y" / "photos"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    assert [store.register_root(first), store.register_root(second), store.register_root(first)] == \
        ["photos", "photos-2", "photos"]
    assert store.roots() == {"photos": first.resolve(), "photos-2": second.resolve()}


def test_a_lone_file_joins_the_root_holding_it_or_registers_its_own_folder(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "loose").mkdir()
    store = Collection(tmp_path / "c")
    store.register_root(tmp_path / "photos")
    got = store.folder_uris([tmp_path / "photos" / "sub" / "y.png", tmp_path / "loose" / "z.png"])
    assert got == ["folder:photos/sub/y.png", "folder:loose/z.png"]


def test_a_moved_folder_is_one_registration_not_a_reindex(tmp_path):
    old, new = tmp_path / "old" / "photos", tmp_path / "new" / "pics"
    old.mkdir(parents=True)
    (old / "x.png").write_bytes(png_bytes(3))
    store = Collection(tmp_path / "c")
    [uri] = store.folder_uris([old / "x.png"], root=old)
    old.rename(tmp_path / "gone")
    with pytest.raises(CollectionError, match="cannot read"):
        store.read_bytes(uri)
    new.parent.mkdir()
    (tmp_path / "gone").rename(new)
    store.register_root(new, name="photos")
    assert store.read_bytes(uri) == png_bytes(3)


@pytest.mark.parametrize("uri,match", [
    ("folder:nope/x.png", "unknown folder root"),
    ("folder:photos/../secret.png", "not a path inside"),
    ("folder:photos/", "not a path inside"),
])
def test_folder_uris_never_leave_their_root(tmp_path, uri, match):
    (tmp_path / "photos").mkdir()
    store = Collection(tmp_path / "c")
    store.register_root(tmp_path / "photos")
    with pytest.raises(CollectionError, match=match) as err:
        store.read_bytes(uri)
    assert str(tmp_path) not in str(err.value)  # errors may reach an HTTP answer: no server path in them


def test_a_link_inside_a_root_that_leads_out_of_it_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes(5))
    (tmp_path / "photos" / "looks-fine.png").symlink_to(tmp_path / "secret.png")
    store = Collection(tmp_path / "c")
    store.register_root(tmp_path / "photos")
    with pytest.raises(CollectionError, match="not a path inside"):
        store.read_bytes("folder:photos/looks-fine.png")


@pytest.mark.parametrize("digest", [
    "../" * 21 + "x",  # 64 characters that climb out of blobs/
    "/etc/passwd".ljust(64, "a"),
    "A" * 64,  # upper case: not what store_bytes writes
    "0" * 63,
    "0" * 65,
])
def test_sha256_uris_must_be_64_lowercase_hex_digits_before_they_become_a_path(tmp_path, digest):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(6))
    store = Collection(tmp_path / "c")
    with pytest.raises(CollectionError, match="not a sha256 URI"):
        store.read_bytes("sha256:" + digest)
    with pytest.raises(CollectionError, match="not a sha256 URI"):
        store.blob_path(digest)


def test_a_file_outside_the_given_root_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(CollectionError, match="not inside"):
        Collection(tmp_path / "c").folder_uris([tmp_path / "elsewhere.png"], root=tmp_path / "photos")


def test_absolute_paths_recorded_by_older_installs_still_read(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(4))
    assert Collection(tmp_path / "c").read_bytes(str(tmp_path / "x.png")) == png_bytes(4)
