"""The HTTP API against a real ``bentoml serve`` (one server for the module): answers, errors, auth, index."""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.contract.image import ImageError, load
from tests.conftest import sample_images
from tests.serving import server as srv

pytestmark = pytest.mark.slow
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(registered_bundle):
    local = srv.prepare_version(registered_bundle)
    env = {"BYOL_MODEL_TAG": registered_bundle, "BYOL_ADMIN_TOKEN": TOKEN}
    state = {**local, "env": env, "server": srv.start(env)}
    state["http"] = httpx.Client(base_url=state["server"].url, timeout=30)
    try:
        yield state
    finally:
        state["http"].close()
        state["server"].stop()


@pytest.fixture(scope="module")
def images():
    return [srv.png(im) for im in sample_images(8)]


def local_embed(api, data: bytes) -> np.ndarray:
    enc = api["encoder"]
    return enc.embed(load(data, enc.input_size)[None])[0]


def error_of(resp: httpx.Response) -> str:
    body = resp.json()
    return str((body[0] if isinstance(body, list) else body)["error"]) + str(body)


def test_embed_equals_onnx_encoder_on_same_bytes(api, images):
    for data in images[:4]:
        r = api["http"].post("/embed", files={"image": ("x.png", data, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == api["version"] and body["dim"] == len(body["embedding"])
        np.testing.assert_allclose(body["embedding"], local_embed(api, data), atol=1e-5)


def test_batch_equals_singles(api, images):
    r = api["http"].post("/embed_batch", files=[("images", (f"{i}.png", d)) for i, d in enumerate(images)])
    assert r.status_code == 200, r.text
    batch = np.asarray(r.json()["embeddings"])
    singles = np.stack([api["http"].post("/embed", files={"image": ("x.png", d)}).json()["embedding"]
                        for d in images])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_concurrent_single_requests_each_get_their_own_vector(api, images):
    """Micro-batching merges concurrent requests; each must still get back the vector of its own image."""
    def one(i):
        r = api["http"].post("/embed", files={"image": ("x.png", images[i % len(images)])})
        return i, np.asarray(r.json()["embedding"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    for i, vec in results:
        np.testing.assert_allclose(vec, local_embed(api, images[i % len(images)]), atol=1e-5)


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _tga() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TGA")
    return buf.getvalue()


BAD_UPLOADS = {
    "not an image": ({"files": {"image": ("a.png", b"hello, I am text")}}, 400, "not an image"),
    "truncated image": ({"files": {"image": ("a.png", "TRUNC")}}, 400, "truncated"),
    "empty file": ({"files": {"image": ("a.png", b"")}}, 400, "empty"),
    "zero size": ({"files": {"image": ("a.png", _png_header_only(0, 0))}}, 400, "image"),
    "huge dimensions": ({"files": {"image": ("a.png", _png_header_only(30000, 30000))}}, 400, "too large"),
    "unsupported format": ({"files": {"image": ("a.tga", _tga())}}, 400, "unsupported image format"),
    "wrong field name": ({"files": {"img": ("a.png", "GOOD")}}, 400, "unexpected file field 'img'"),
    "json body": ({"json": {"image": "aGVsbG8="}}, 400, "error"),
    "empty body": ({"content": b""}, 400, "error"),
    "text instead of file": ({"files": {"image": (None, b"/etc/passwd")}}, 400, "must be an uploaded file"),
    "url form": ({"data": {"image": "http://10.1.2.3/a.png"}}, 415, "multipart/form-data"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_gets_4xx_with_message(api, images, case):
    kwargs, status, needle = BAD_UPLOADS[case]
    if "files" in kwargs:
        name, (fname, data) = next(iter(kwargs["files"].items()))
        data = {"TRUNC": images[0][: len(images[0]) // 2], "GOOD": images[0]}.get(data, data) \
            if isinstance(data, str) else data
        kwargs = {"files": {name: (fname, data)}}
    r = api["http"].post("/embed", **kwargs)
    assert r.status_code == status, r.text
    assert needle.lower() in error_of(r).lower()


def test_too_many_images_is_413(api, images):
    from serving.http_helpers import MAX_IMAGES

    files = [("images", (f"{i}.png", images[0])) for i in range(MAX_IMAGES + 1)]
    r = api["http"].post("/embed_batch", files=files)
    assert r.status_code == 413 and "too many images" in error_of(r)


def test_bad_item_in_batch_is_named_by_position(api, images):
    r = api["http"].post("/embed_batch", files=[("images", ("a.png", images[0])), ("images", ("b.png", b"junk"))])
    assert r.status_code == 400 and "image #1" in error_of(r)


def _odd(odd_images, accepted: bool):
    size = 28
    for path in sorted(odd_images.iterdir()):
        if path.name == "MANIFEST.tsv":
            continue
        data = path.read_bytes()
        try:
            load(data, size)
            ok = True
        except ImageError:
            ok = False
        if ok == accepted:
            yield path, data


def test_odd_but_valid_images_are_embedded_like_the_image_contract(api, odd_images):
    """EXIF-rotated, CMYK, 16-bit, palette+transparency, grayscale, animated... all the image contract accepts."""
    files = list(_odd(odd_images, accepted=True))
    assert len(files) >= 20
    for path, data in files:
        r = api["http"].post("/embed", files={"image": (path.name, data)})
        assert r.status_code == 200, f"{path.name}: {r.text}"
        np.testing.assert_allclose(r.json()["embedding"], local_embed(api, data), atol=1e-5, err_msg=path.name)


def test_broken_odd_images_get_400_never_500(api, odd_images):
    files = list(_odd(odd_images, accepted=False))
    assert files
    for path, data in files:
        r = api["http"].post("/embed", files={"image": (path.name, data)})
        assert r.status_code == 400, f"{path.name}: {r.status_code} {r.text}"


def test_ready_and_health(api):
    assert api["http"].get("/readyz").status_code == 200
    assert api["http"].get("/healthz").status_code == 200


def test_info_describes_the_loaded_triple(api):
    info = api["http"].get("/info").json()
    enc = api["encoder"]
    assert (info["version"], info["dim"], info["input_size"]) == (api["version"], enc.dim, enc.input_size)
    assert info["index"]["version"] == api["version"] and isinstance(info["index"]["size"], int)
    assert info["classes"] == ["shirt", "shoe", "bag"]


def test_metrics_are_prometheus_text(api):
    r = api["http"].get("/metrics")
    assert r.status_code == 200 and "bentoml_service_request" in r.text
    assert f'byol_served_version_info{{version="{api["version"]}"}} 1.0' in r.text  # ours too (test_metrics.py)


def test_added_image_is_found_first_with_score_one(api, images):
    r = api["http"].post("/index/add", headers=AUTH, files=[("images", ("q.png", images[5]))],
                         data={"labels": '["probe-me"]'})
    assert r.status_code == 200, r.text
    (new_id,) = r.json()["ids"]
    r = api["http"].post("/search", files={"image": ("q.png", images[5])}, data={"k": "3"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == new_id and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["metadata"]["label"] == "probe-me" and top["metadata"]["uri"].startswith("sha256:")


def test_removed_item_is_no_longer_found(api, images):
    (new_id,) = api["http"].post("/index/add", headers=AUTH, files=[("images", ("q.png", images[6]))]).json()["ids"]
    r = api["http"].post("/index/remove", headers=AUTH, json={"ids": [new_id], "version": api["version"]})
    assert r.status_code == 200 and r.json()["removed"] == 1
    hits = api["http"].post("/search", files={"image": ("q.png", images[6])}, data={"k": "5"}).json()["results"]
    assert new_id not in [h["id"] for h in hits]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_admin_endpoints_need_the_token(api, images, headers):
    add = api["http"].post("/index/add", headers=headers, files=[("images", ("q.png", images[0]))])
    rm = api["http"].post("/index/remove", headers=headers, json={"ids": [0], "version": api["version"]})
    reload = api["http"].post("/admin/reload", headers=headers, json={})
    assert (add.status_code, rm.status_code, reload.status_code) == (401, 401, 401)


def test_bad_k_is_400(api, images):
    r = api["http"].post("/search", files={"image": ("q.png", images[0])}, data={"k": "0"})
    assert r.status_code == 400 and "k must be" in error_of(r)


@pytest.mark.parametrize("method", ["probe", "knn"])
def test_classify_answers_like_the_local_classifier(api, images, method):
    r = api["http"].post("/classify", files={"image": ("q.png", images[1])}, data={"method": method})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = api[method].predict_proba(local_embed(api, images[1])[None])[0]
    got = np.asarray([body["probabilities"][c] for c in ["shirt", "shoe", "bag"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert body["label"] == ["shirt", "shoe", "bag"][int(np.argmax(expected))] and body["version"] == api["version"]


def test_reload_swaps_and_unknown_version_is_404_and_keeps_serving(api, images):
    r = api["http"].post("/admin/reload", headers=AUTH, json={"version": api["version"]})
    assert r.status_code == 200 and r.json()["version"] == api["version"]
    r = api["http"].post("/admin/reload", headers=AUTH, json={"version": "19990101-000000-deadbeef"})
    assert r.status_code == 404 and "no bundle" in error_of(r)
    assert "<server path>" in error_of(r) and os.environ["BYOL_HOME"] not in r.text  # no server path in answers
    r = api["http"].post("/embed", files={"image": ("x.png", images[0])})
    assert r.status_code == 200 and r.json()["version"] == api["version"]


def test_a_corrupt_release_file_is_a_409_naming_no_server_path(api):
    from serving.paths import release_file

    path = release_file()
    old = path.read_bytes() if path.exists() else None
    path.write_text("{not json")
    try:
        r = api["http"].post("/admin/reload", headers=AUTH, json={})
        assert r.status_code == 409 and "is corrupt" in error_of(r), r.text
        assert str(path.parent) not in r.text and "release.json" not in r.text
    finally:
        path.unlink() if old is None else path.write_bytes(old)


def test_reload_to_another_version_swaps_encoder_index_and_probe_together(api, images, tmp_path):
    import json
    import shutil

    from serving.store import register_bundle

    other = tmp_path / "other"
    shutil.copytree(api["bundle_dir"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = "20000101-000000-0ther000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    register_bundle(other)
    def embed_version(_):
        r = api["http"].post("/embed", files={"image": ("x.png", images[0])})
        return r.status_code, r.json().get("version")

    with ThreadPoolExecutor(8) as pool:  # requests keep flowing while the swap happens
        during = pool.map(embed_version, range(40))
        r = api["http"].post("/admin/reload", headers=AUTH, json={"version": manifest["version"]})
        during = list(during)
    assert r.status_code == 200, r.text
    swapped = r.json()
    assert (swapped["version"], swapped["previous"]) == (manifest["version"], api["version"])
    assert swapped["followed"] == swapped["workers"] >= 1  # every embedding worker serves the new version
    assert all(code == 200 and v in (api["version"], manifest["version"]) for code, v in during)
    try:
        assert api["http"].post("/embed", files={"image": ("x.png", images[0])}).json()["version"] == \
            manifest["version"]
        r = api["http"].post("/search", files={"image": ("x.png", images[0])})
        assert r.status_code == 409 and f"no index for version {manifest['version']}" in error_of(r)
        info = api["http"].get("/info").json()
        assert info["index"] is None and info["classes"] is None
    finally:
        r = api["http"].post("/admin/reload", headers=AUTH, json={"version": api["version"]})
    assert r.status_code == 200 and api["http"].get("/info").json()["index"]["version"] == api["version"]


def test_reload_reconciles_the_new_index_with_adds_and_removes_made_meanwhile(api, tmp_path):
    """A retrained version's index is rebuilt from the collection while the old one serves; what is added or
    removed over HTTP in between must neither vanish nor come back at the swap."""
    import hashlib
    import json
    import shutil

    from index.durable import DurableIndex
    from serving import paths
    from serving.store import register_bundle

    other = tmp_path / "rebuilt"
    shutil.copytree(api["bundle_dir"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    version = manifest["version"] = "20000102-000000-5ync0000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    register_bundle(other)
    idx = DurableIndex.open(paths.index_dir(version), dim=api["encoder"].dim, encoder_version=version,
                            factory="Flat", create=True)
    idx.close()  # stands for the rebuild: it holds nothing of what happens below
    rng = np.random.default_rng(7)
    kept, dropped = (srv.png(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(2))
    r = api["http"].post("/index/add", headers=AUTH,
                         files=[("images", ("a.png", kept)), ("images", ("b.png", dropped))])
    assert r.status_code == 200, r.text
    r = api["http"].post("/index/remove", headers=AUTH,
                         json={"ids": [r.json()["ids"][1]], "version": r.json()["version"]})
    assert r.status_code == 200 and r.json()["removed"] == 1
    r = api["http"].post("/admin/reload", headers=AUTH, json={"version": version})
    assert r.status_code == 200, r.text
    try:
        def top(image):
            r = api["http"].post("/search", files={"image": ("q.png", image)}, data={"k": "1"})
            assert r.status_code == 200 and r.json()["version"] == version, r.text
            return r.json()["results"][0]

        hit = top(kept)
        assert hit["metadata"]["uri"] == "sha256:" + hashlib.sha256(kept).hexdigest() and hit["score"] > 0.999
        assert top(dropped)["metadata"]["uri"] != "sha256:" + hashlib.sha256(dropped).hexdigest()
    finally:
        r = api["http"].post("/admin/reload", headers=AUTH, json={"version": api["version"]})
    assert r.status_code == 200


def test_acknowledged_add_survives_kill_9(api):
    """Last in the module: kills the module's server (and its worker) with SIGKILL, then restarts it."""
    image = srv.png(np.random.default_rng(42).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    r = api["http"].post("/index/add", headers=AUTH, files=[("images", ("kill.png", image))],
                         data={"labels": '["survivor"]'})
    assert r.status_code == 200, r.text
    (new_id,) = r.json()["ids"]
    api["server"].kill9()
    api["server"] = srv.start(api["env"])
    api["http"].close()
    api["http"] = httpx.Client(base_url=api["server"].url, timeout=30)
    r = api["http"].post("/search", files={"image": ("kill.png", image)}, data={"k": "1"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert (top["id"], top["metadata"]["label"]) == (new_id, "survivor")
    assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_embed_batch_answers_npy_when_asked_with_the_same_vectors(api, images):
    import io

    files = [("images", (f"{i}.png", d)) for i, d in enumerate(images)]
    as_json = api["http"].post("/embed_batch", files=files)
    as_npy = api["http"].post("/embed_batch", files=files, headers={"Accept": "application/x-npy"})
    assert as_json.status_code == as_npy.status_code == 200, as_npy.text
    assert as_npy.headers["content-type"] == "application/x-npy"
    assert (as_npy.headers["x-byol-version"], as_npy.headers["x-byol-dim"]) == (api["version"], str(api["encoder"].dim))
    vectors = np.load(io.BytesIO(as_npy.content), allow_pickle=False)
    assert vectors.dtype == np.float32 and vectors.shape == (len(images), api["encoder"].dim)
    np.testing.assert_array_equal(vectors, np.asarray(as_json.json()["embeddings"], dtype=np.float32))


def test_an_error_is_json_even_when_npy_was_asked_for(api):
    r = api["http"].post("/embed_batch", files=[("images", ("a.png", b"junk"))],
                         headers={"Accept": "application/x-npy"})
    assert r.status_code == 400 and "image" in error_of(r)


def test_a_request_larger_than_a_model_batch_keeps_its_order(api):
    """130 images go to ONNX Runtime in model batches of at most 64 (serving.batching), answered in upload order."""
    from serving.runtime import MAX_BATCH_SIZE

    rng = np.random.default_rng(11)
    datas = [srv.png(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(2 * MAX_BATCH_SIZE + 2)]
    r = api["http"].post("/embed_batch", files=[("images", (f"{i}.png", d)) for i, d in enumerate(datas)])
    assert r.status_code == 200, r.text
    expected = np.stack([local_embed(api, d) for d in datas])
    np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), expected, atol=1e-5)
