"""clients/client.py against a real server: same vectors as the image contract + encoder, clear errors, CLI."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest

from clients.client import AsyncEmbeddingClient, ClientError, EmbeddingClient
from clients.commands.embed import main as embed_main
from serving.contract.image import load
from tests.conftest import sample_images
from tests.serving import server as srv

pytestmark = pytest.mark.slow
TOKEN = "client-test-token-16"


@pytest.fixture(scope="module")
def live(registered_bundle):
    local = srv.prepare_version(registered_bundle, n_fit=30)
    server = srv.start({"BYOL_MODEL_TAG": registered_bundle, "BYOL_ADMIN_TOKEN": TOKEN})
    try:
        yield {**local, "url": server.url}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-images")
    paths = []
    # mirrored: other tests of the session index the original test images under the same bundle version, and a
    # pixel-identical twin in the index would tie with the image this module adds
    for i, im in enumerate(sample_images(4)[:, :, ::-1]):
        paths.append(d / f"{i}.png")
        paths[-1].write_bytes(srv.png(im))
    return paths


def expected(live, path) -> np.ndarray:
    enc = live["encoder"]
    return enc.embed(load(path.read_bytes(), enc.input_size)[None])[0]


def test_embed_path_and_bytes_give_the_encoder_vector(live, files):
    with EmbeddingClient(live["url"]) as c:
        np.testing.assert_allclose(c.embed(files[0]), expected(live, files[0]), atol=1e-5)
        np.testing.assert_allclose(c.embed(files[1].read_bytes()), expected(live, files[1]), atol=1e-5)
        assert c.version == live["version"]


def test_embed_batch_shape_and_order(live, files):
    with EmbeddingClient(live["url"]) as c:
        got = c.embed_batch(files)
    np.testing.assert_allclose(got, np.stack([expected(live, f) for f in files]), atol=1e-5)


def test_server_error_is_client_error_with_status_and_message(live, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with EmbeddingClient(live["url"]) as c, pytest.raises(ClientError) as err:
        c.embed(bad)
    assert err.value.status == 400 and "not an image" in err.value.message


def test_unreachable_server_is_client_error_naming_the_url():
    url = f"http://127.0.0.1:{srv.free_port()}"
    with EmbeddingClient(url, timeout=5) as c, pytest.raises(ClientError) as err:
        c.info()
    assert err.value.status is None and url in str(err.value)


def test_admin_call_without_token_fails_before_sending(live, files):
    with EmbeddingClient(live["url"]) as c, pytest.raises(ClientError, match="admin token"):
        c.add([files[0]])


def test_add_search_remove_round_trip(live, files):
    with EmbeddingClient(live["url"], token=TOKEN) as c:
        (new_id,) = c.add([files[2]], labels=["mine"])
        top = c.search(files[2], k=1)[0]
        assert (top["id"], top["metadata"]["label"]) == (new_id, "mine")
        assert c.remove([new_id]) == 1
        assert new_id not in [h["id"] for h in c.search(files[2], k=5)]


def test_search_batch_search_by_id_and_thumbnail(live, files):
    from PIL import Image

    with EmbeddingClient(live["url"], token=TOKEN) as c:
        ids = c.add(files, labels=["first", "second", "third", "fourth"])[:2]
        batch = c.search_batch(files[:2], k=3)
        assert [len(hits) for hits in batch] == [3, 3] and [hits[0]["id"] for hits in batch] == ids
        near = c.search_by_id(ids[0], k=3)
        by_image = [h for h in c.search(files[0], k=4) if h["id"] != ids[0]][:3]
        assert [h["id"] for h in near] == [h["id"] for h in by_image] and c.version == live["version"]
        png = c.thumbnail(ids[1])
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
                                      np.asarray(Image.open(files[1]).convert("RGB")))
        for call in (lambda: c.thumbnail(987654321), lambda: c.search_by_id(987654321)):
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.status == 404 and "no item 987654321" in err.value.message


def test_async_client_new_endpoints(live, files):
    async def run():
        async with AsyncEmbeddingClient(live["url"], token=TOKEN) as c:
            (item,) = await c.add([files[3]])
            batch, near, png = await asyncio.gather(c.search_batch([files[3]], k=2), c.search_by_id(item, k=2),
                                                    c.thumbnail(item))
            return item, batch, near, png

    item, batch, near, png = asyncio.run(run())
    assert batch[0][0]["id"] == item and item not in [h["id"] for h in near] and len(near) == 2
    assert png.startswith(b"\x89PNG")


def test_classify_and_info(live, files):
    with EmbeddingClient(live["url"]) as c:
        out = c.classify(files[0], method="knn")
        info = c.info()
    assert out["label"] in info["classes"] and sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert info["version"] == live["version"]


def test_async_client_concurrent_embeds(live, files):
    async def run():
        async with AsyncEmbeddingClient(live["url"]) as c:
            return await asyncio.gather(*(c.embed(f) for f in files))

    got = asyncio.run(run())
    np.testing.assert_allclose(np.stack(got), np.stack([expected(live, f) for f in files]), atol=1e-5)


def test_embed_cli_writes_npy_and_json(live, files, tmp_path, capsys):
    out = tmp_path / "v.npy"
    assert embed_main([*map(str, files), "--url", live["url"], "--format", "npy", "--out", str(out),
                       "--batch", "3"]) == 0
    np.testing.assert_allclose(np.load(out), np.stack([expected(live, f) for f in files]), atol=1e-5)
    assert embed_main([str(files[0]), "--url", live["url"]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == live["version"] and doc["items"][0]["file"] == str(files[0])


def test_embed_cli_bad_file_is_one_line_error(live, tmp_path, capsys):
    from clients.cli import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert main(["embed", str(bad), "--url", live["url"]]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "400" in err[0] and "not an image" in err[0]


def test_embed_batch_is_sent_and_answered_as_npy_and_names_the_version(live, files):
    """The compact answer: same vectors as the JSON one, float32 [N, D], the version from its header."""
    with EmbeddingClient(live["url"]) as c:
        got = c.embed_batch(files)
        assert c.version == live["version"]
        as_json = c._http.post("/embed_batch", files=c._files("images", files))  # what a JSON-only reader gets
        from_json = c._vectors(as_json, len(files))
    assert as_json.headers["content-type"] == "application/json"
    assert got.dtype == np.float32 and got.shape == (len(files), live["encoder"].dim)
    np.testing.assert_array_equal(got, from_json)


def test_async_embed_batch_equals_the_sync_one(live, files):
    async def run():
        async with AsyncEmbeddingClient(live["url"]) as c:
            return await c.embed_batch(files[::-1]), c.version

    got, version = asyncio.run(run())
    with EmbeddingClient(live["url"]) as c:
        np.testing.assert_array_equal(got, c.embed_batch(files[::-1]))
    assert version == live["version"]


def test_embed_batch_error_is_client_error(live, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    with EmbeddingClient(live["url"]) as c, pytest.raises(ClientError) as err:
        c.embed_batch([bad])
    assert err.value.status == 400 and "not an image" in err.value.message
