"""``byol index build|add`` and ``byol search`` through the real CLI, a real bundle, ONNX Runtime and FAISS."""

from __future__ import annotations

import numpy as np
import pytest

from clients.cli import main as byol
from clients.workflows.indexing import collection, embed_chunks, partial_dir, read_images
from index.durable import DurableIndex
from serving import paths
from serving.contract.encoder import OnnxEncoder
from serving.store import bundle_path

N = 300


@pytest.fixture(scope="module")
def built(registered_bundle, fmnist_root):
    """An index of the first N Fashion-MNIST test images (chunks of 100)."""
    code = byol(["index", "build", "--model", registered_bundle, "--data", "fashion-mnist", "--data-root",
                 str(fmnist_root), "--split", "test", "--limit", str(N), "--chunk", "100", "--quiet", "--force"])
    assert code == 0
    return OnnxEncoder(bundle_path(registered_bundle))


def open_index(encoder):
    return DurableIndex.open(paths.index_dir(encoder.version), read_only=True)


def test_build_indexes_every_item_with_uri_and_label(built, fmnist_test):
    index = open_index(built)
    y = int(fmnist_test.labels[7])
    assert len(index) == N
    assert index.metadata(7) == {**index.metadata(7), "uri": "fashion-mnist:test/7", "label_id": y,
                                 "label": fmnist_test.classes[y]}


def test_an_indexed_image_finds_itself_first(built, fmnist_test):
    q = built.embed(fmnist_test.images[42:43])
    hit = open_index(built).search(q, 1, built.version)[0][0]
    assert hit.metadata["uri"] == "fashion-mnist:test/42" and hit.score > 0.999


def test_build_records_items_in_the_collection(built):
    uris = {it.uri for it in collection().items()}
    assert {f"fashion-mnist:test/{i}" for i in range(N)} <= uris


def test_interrupted_build_resumes_from_finished_chunks(registered_bundle, fmnist_root):
    encoder = OnnxEncoder(bundle_path(registered_bundle))
    images = read_images("fashion-mnist", "test", encoder.input_size, str(fmnist_root), limit=250)
    work = partial_dir(encoder.version, images, 50)

    def crash_after_two(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_chunks(encoder, images.images, work, batch=32, chunk=50, on_chunk=crash_after_two, progress=False)
    vectors, computed = embed_chunks(encoder, images.images, work, batch=32, chunk=50, progress=False)
    assert computed == 3 and np.allclose(vectors, encoder.embed(images.images), atol=1e-5)


def test_killed_build_leaves_the_served_index_untouched(built, registered_bundle, fmnist_root, monkeypatch):
    import clients.workflows.indexing as indexing

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(indexing, "build_index", boom)  # dies after embedding, before writing
    code = byol(["index", "build", "--model", registered_bundle, "--data-root", str(fmnist_root), "--split", "test",
                 "--limit", "50", "--quiet", "--force"])
    assert code == 130 and len(open_index(built)) == N


def test_rebuild_without_force_is_refused(built, registered_bundle, fmnist_root, capsys):
    code = byol(["index", "build", "--model", registered_bundle, "--data-root", str(fmnist_root), "--split", "test",
                 "--limit", "20", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--force" in err[0]


def test_missing_model_tag_exits_nonzero_with_one_line(capsys):
    code = byol(["index", "build", "--model", "20000101-000000-deadbeef", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "no bundle" in err[0]


def test_index_add_appends_files_durably(built, registered_bundle, fmnist_test, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(fmnist_test.images[500 + i]).save(tmp_path / f"x{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert byol(["index", "add", "--model", registered_bundle, str(tmp_path), "--label", "mine"]) == 0
    index = open_index(built)
    uris = {index.metadata(i)["uri"] for i in range(N, N + 3)}
    root = collection().register_root(tmp_path)  # the folder given is the root its files are named under
    assert len(index) == N + 3 and uris == {f"folder:{root}/x{i}.png" for i in range(3)}
    assert collection().read_bytes(f"folder:{root}/x1.png") == (tmp_path / "x1.png").read_bytes()


def test_search_prints_neighbours_and_writes_a_grid(built, registered_bundle, fmnist_test, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(fmnist_test.images[3]).save(tmp_path / "q.png")
    grid = tmp_path / "grid.png"
    assert byol(["search", str(tmp_path / "q.png"), "-k", "4", "--model", registered_bundle,
                 "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist:test/3" in out.splitlines()[1] and Image.open(grid).size[0] > 4 * 96


def test_search_with_a_non_image_exits_nonzero_with_one_line(built, registered_bundle, tmp_path, capsys):
    (tmp_path / "q.txt").write_text("hello")
    code = byol(["search", str(tmp_path / "q.txt"), "--model", registered_bundle])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "not an image" in err[0]


def test_collection_rebuild_indexes_every_stored_item_for_a_new_version(built, tmp_path):
    from serving.store import register_bundle
    from tests.conftest import make_bundle

    collection().remove(["fashion-mnist:test/3"])  # what /index/remove records
    expected = {it.uri for it in collection().items()}
    new_tag = register_bundle(make_bundle(tmp_path / "other", seed=1))
    assert byol(["index", "build", "--model", new_tag, "--collection", "--quiet"]) == 0
    enc = OnnxEncoder(bundle_path(new_tag))
    index = DurableIndex.open(paths.index_dir(enc.version), read_only=True)
    assert index.encoder_version == enc.version and enc.version != built.version
    uris = {index.metadata(i)["uri"] for i in range(len(expected) + 10) if index.metadata(i)}
    assert uris == expected and "fashion-mnist:test/3" not in uris


def test_a_folder_build_stores_paths_relative_to_the_folder(fmnist_test, tmp_path):
    from PIL import Image

    from serving.store import register_bundle
    from tests.conftest import make_bundle

    (tmp_path / "shop" / "shoes").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(fmnist_test.images[600 + i]).save(tmp_path / "shop" / "shoes" / f"s{i}.png")
    tag = register_bundle(make_bundle(tmp_path / "b", seed=3))
    assert byol(["index", "build", "--model", tag, "--data", str(tmp_path / "shop"), "--quiet"]) == 0
    enc = OnnxEncoder(bundle_path(tag))
    metas = [m for _, m in DurableIndex.open(paths.index_dir(enc.version), read_only=True).items()]
    assert sorted(m["uri"] for m in metas) == [f"folder:shop/shoes/s{i}.png" for i in range(4)]
    assert not any(str(tmp_path) in str(m) for m in metas)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, fmnist_test):
    """A fresh model version and an embed-folder output of 30 images (nested, PNG + JPEG, one broken file)."""
    from PIL import Image

    from serving.store import register_bundle
    from tests.conftest import make_bundle

    root = tmp_path_factory.mktemp("emb")
    folder = root / "catalogue"
    for i in range(30):
        sub = folder / ("tops" if i % 2 else "shoes/left")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fmnist_test.images[700 + i]).resize((56, 56)).save(sub / f"{i:02d}.{'png' if i % 3 else 'jpg'}")
    (folder / "tops" / "broken.png").write_bytes(b"not an image")
    tag = register_bundle(make_bundle(root / "bundle", seed=2))
    assert byol(["embed-folder", str(folder), "--out", str(root / "out"), "--model", tag, "--quiet"]) == 0
    return {"tag": tag, "folder": folder, "out": root / "out", "encoder": OnnxEncoder(bundle_path(tag))}


def test_an_index_built_from_embeddings_finds_each_file_by_its_relative_path(embedded, capsys):
    from serving.contract.image import load

    enc, folder = embedded["encoder"], embedded["folder"]
    assert byol(["index", "build", "--from-embeddings", str(embedded["out"]), "--model", embedded["tag"]]) == 0
    assert "vectors from" in capsys.readouterr().out
    index = open_index(enc)
    assert len(index) == 30
    query = folder / "shoes" / "left" / "04.png"
    hit = index.search(enc.embed(load(query.read_bytes(), enc.input_size)[None]), 1, enc.version)[0][0]
    assert hit.metadata["path"] == "shoes/left/04.png" and hit.metadata["uri"] == "folder:catalogue/shoes/left/04.png"
    assert hit.score > 0.999 and str(folder) not in str(hit.metadata)
    assert collection().read_bytes(hit.metadata["uri"]) == query.read_bytes()  # thumbnails and rebuilds read it


def test_embeddings_of_another_encoder_are_refused(embedded, registered_bundle, capsys):
    code = byol(["index", "build", "--from-embeddings", str(embedded["out"]), "--model", registered_bundle])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and f"--model {embedded['encoder'].version}" in err[0]


def test_index_export_writes_the_served_index_in_the_embed_folder_layout(embedded, tmp_path):
    from clients.workflows.embedding import read_embeddings

    if not DurableIndex.exists(paths.index_dir(embedded["encoder"].version)):
        assert byol(["index", "build", "--from-embeddings", str(embedded["out"]), "--model", embedded["tag"]]) == 0
    assert byol(["index", "export", "--model", embedded["tag"], "--out", str(tmp_path / "exp")]) == 0
    vectors, rows, manifest = read_embeddings(tmp_path / "exp")
    src_vectors, src_rows, _ = read_embeddings(embedded["out"])
    assert manifest["encoder_version"] == embedded["encoder"].version and manifest["exact"]
    by_path = {r["path"]: i for i, r in enumerate(rows)}
    assert set(by_path) == {r["path"] for r in src_rows} and all(r["uri"].startswith("folder:") for r in rows)
    order = [by_path[r["path"]] for r in src_rows]
    np.testing.assert_allclose(vectors[order], src_vectors, atol=1e-5)
    assert byol(["index", "export", "--model", embedded["tag"], "--out", str(tmp_path / "exp")]) != 0  # not overwritten


def test_index_repair_names_itself_in_the_error_and_keeps_every_readable_row(capsys):
    """A damaged item store stops the read with the command to run; ``byol index repair`` then keeps every row on
    the undamaged pages, and items and vectors agree again."""
    from index.db import StoreDamagedError
    from tests.index.test_store_faults import damage_a_page_holding

    version = "20990101-000000-repair00"
    directory = paths.index_dir(version)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    with DurableIndex.open(directory, dim=8, encoder_version=version, factory="Flat", create=True) as ix:
        ix.add(x, [{"uri": f"u{i}", "label": "x" * 40} for i in range(400)], version)
        ix.compact()
    damage_a_page_holding(directory / "store.db", b"u200")
    with pytest.raises(StoreDamagedError, match=f"byol index repair --model {version}"):
        with DurableIndex.open(directory) as ix:
            ix.search(x, 1, version)  # if the open did not read the damaged page, the hits' metadata does
    assert byol(["index", "repair", "--model", version]) == 0
    out = capsys.readouterr().out
    assert "repaired" in out and "store.db.damaged" in out
    with DurableIndex.open(directory, read_only=True) as ix:
        uris = {m["uri"] for _, m in ix.items()}
        assert 300 < len(uris) < 400 and "u200" not in uris and len(ix) == len(uris)
        hits = ix.search(x, 1, version)
        assert all(h[0].metadata["uri"] == f"u{i}" for i, h in enumerate(hits) if f"u{i}" in uris)
    assert byol(["index", "repair", "--model", version]) == 0
    assert "nothing to repair" in capsys.readouterr().out
