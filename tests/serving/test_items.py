"""Items by id against a real server: thumbnails, search by id, batched search, and the OpenAPI page's text.

The index is the demo's kind (Fashion-MNIST test items as dataset URIs, ids 0..n-1) plus uploads added over HTTP.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from serving.contract.image import decode
from tests.serving import server as srv
from tests.serving.gallery import AUTH, bare_version, error_of, gallery

pytestmark = pytest.mark.slow
N = 120


@pytest.fixture(scope="module")
def api(registered_bundle, fmnist_root, tmp_path_factory):
    with gallery(registered_bundle, tmp_path_factory.mktemp("items-home"), fmnist_root, n=N) as state:
        yield state


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A larger upload (300 x 200), so its thumbnail is really scaled down."""
    rng = np.random.default_rng(11)
    return srv.png(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def search(api, image: bytes, k: int) -> list[dict]:
    r = api["http"].post("/search", files={"image": ("q.png", image)}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def by_id(api, item_id, k=10):
    return api["http"].post("/search_by_id", json={"id": item_id, "k": k})


# ---------------------------------------------------------------------------------------------- thumbnails
def test_thumbnail_of_a_dataset_item_is_its_image(api, fmnist_test):
    r = api["http"].get("/items/7/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(png_pixels(r.content), fmnist_test.images[7])  # 28 px: never enlarged


def test_thumbnail_of_an_upload_is_scaled_to_128(api, photo):
    r = api["http"].post("/index/add", headers=AUTH, files=[("images", ("p.png", photo))], data={"labels": '["wide"]'})
    assert r.status_code == 200, r.text
    (item,) = r.json()["ids"]
    r = api["http"].get(f"/items/{item}/thumbnail")
    assert r.status_code == 200, r.text
    expected = decode(photo)
    expected.thumbnail((128, 128))
    got = png_pixels(r.content)
    assert got.shape == (85, 128, 3)
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_thumbnail_revalidates_by_etag(api):
    first = api["http"].get("/items/3/thumbnail")
    tag = first.headers["etag"]
    again = api["http"].get("/items/3/thumbnail", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    other = api["http"].get("/items/4/thumbnail", headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "0x10", "99999999999999999999999", "%20"])
def test_thumbnail_of_a_non_integer_id_is_400(api, raw):
    r = api["http"].get(f"/items/{raw}/thumbnail")
    assert r.status_code == 400 and "item id must be an integer" in error_of(r)


def test_thumbnail_of_unknown_and_removed_ids_is_404(api, photo):
    r = api["http"].get("/items/987654/thumbnail")
    assert r.status_code == 404 and "no item 987654" in error_of(r)
    flipped = srv.png(png_pixels(photo)[::-1].copy())  # another image: the other tests keep theirs
    (item,) = api["http"].post("/index/add", headers=AUTH, files=[("images", ("f.png", flipped))]).json()["ids"]
    assert api["http"].get(f"/items/{item}/thumbnail").status_code == 200
    r = api["http"].post("/index/remove", headers=AUTH, json={"ids": [item], "version": api["version"]})
    assert r.status_code == 200 and r.json()["removed"] == 1
    r = api["http"].get(f"/items/{item}/thumbnail")
    assert r.status_code == 404 and f"no item {item}" in error_of(r)


def test_thumbnail_routes_never_take_a_path(api):
    for path in ("/items/..%2F..%2Fetc%2Fpasswd/thumbnail", "/items/fashion-mnist:test%2F1/thumbnail"):
        r = api["http"].get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "root:" not in r.text


# ---------------------------------------------------------------------------------------------- search by id
def test_search_by_id_is_search_with_the_items_image_minus_itself(api, fmnist_test):
    r = by_id(api, 12, k=8)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == api["version"] and body["id"] == 12
    assert body["metadata"]["uri"] == "fashion-mnist:test/12" and body["metadata"]["label"] == fmnist_test.classes[
        int(fmnist_test.labels[12])]
    hits = body["results"]
    assert len(hits) == 8 and 12 not in [h["id"] for h in hits]
    expected = [h for h in search(api, srv.png(fmnist_test.images[12]), 9) if h["id"] != 12][:8]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in expected], atol=1e-5)


def test_search_by_id_of_an_upload(api, photo):
    (item,) = api["http"].post("/index/add", headers=AUTH, files=[("images", ("p.png", photo))]).json()["ids"]
    r = by_id(api, item, k=5)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["uri"].startswith("sha256:") and item not in [h["id"] for h in r.json()["results"]]


@pytest.mark.parametrize("body,status,needle", [
    ({"id": 987654}, 404, "no item 987654"),
    ({"id": -1}, 400, "item id must be an integer"),
    ({"id": 3, "k": 0}, 400, "k must be"),
    ({"id": "three"}, 400, "id"),
    ({"k": 3}, 400, "id"),
])
def test_search_by_id_errors(api, body, status, needle):
    r = api["http"].post("/search_by_id", json=body)
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json())


def test_search_by_id_rejects_a_bad_json_body_at_the_edge(api):
    r = api["http"].post("/search_by_id", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in error_of(r)


# ---------------------------------------------------------------------------------------------- batched search
def test_search_batch_equals_single_searches_in_order(api, fmnist_test):
    images = [srv.png(fmnist_test.images[i]) for i in (40, 3, 77)]
    r = api["http"].post("/search_batch", files=[("images", (f"{i}.png", d)) for i, d in enumerate(images)],
                         data={"k": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == api["version"] and len(body["results"]) == 3
    for got, image, item in zip(body["results"], images, (40, 3, 77), strict=True):
        single = search(api, image, 4)
        assert [h["id"] for h in got] == [h["id"] for h in single] and got[0]["id"] == item
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in single], atol=1e-5)


def test_search_batch_limits_and_bad_items(api, fmnist_test):
    from serving.http_helpers import MAX_IMAGES

    good = srv.png(fmnist_test.images[0])
    r = api["http"].post("/search_batch", files=[("images", (f"{i}.png", good)) for i in range(MAX_IMAGES + 1)])
    assert r.status_code == 413 and "too many images" in error_of(r)
    r = api["http"].post("/search_batch", files=[("images", ("a.png", good)), ("images", ("b.png", b"junk"))])
    assert r.status_code == 400 and "image #1" in error_of(r)
    r = api["http"].post("/search_batch", files=[("images", ("a.png", good))], data={"k": "0"})
    assert r.status_code == 400 and "k must be" in error_of(r)
    r = api["http"].post("/search_batch", files=[("image", ("a.png", good))])
    assert r.status_code == 400 and "unexpected file field 'image'" in error_of(r)


# ---------------------------------------------------------------------------------------------- no index: 409
def test_a_version_without_index_answers_409_everywhere(api, registered_bundle, fmnist_test, tmp_path):
    bare = bare_version(registered_bundle, tmp_path)
    r = api["http"].post("/admin/reload", headers=AUTH, json={"version": bare})
    assert r.status_code == 200, r.text
    try:
        image = srv.png(fmnist_test.images[0])
        answers = [api["http"].get("/items/1/thumbnail"), by_id(api, 1),
                   api["http"].post("/search_batch", files=[("images", ("a.png", image))])]
        for r in answers:
            assert r.status_code == 409 and f"no index for version {bare}" in error_of(r), r.text
    finally:
        r = api["http"].post("/admin/reload", headers=AUTH, json={"version": api["version"]})
    assert r.status_code == 200 and api["http"].get("/items/1/thumbnail").status_code == 200


# ---------------------------------------------------------------------------------------------- what / says
def test_openapi_document_describes_this_service(api):
    from serving.openapi import TITLE

    doc = api["http"].get("/docs.json").json()
    assert doc["info"]["title"] == TITLE
    text = doc["info"]["description"]
    assert text.startswith(f"# {TITLE}") and "(./ui)" in text and "/items/{id}/thumbnail" in text
    assert "Machine Learning Service created with BentoML" not in json.dumps(doc["info"])
    assert {"/search", "/search_by_id", "/search_batch"} <= set(doc["paths"])
    assert api["http"].get("/").status_code == 200


def test_ui_page_and_its_files_are_served_from_this_server_only(api):
    page = api["http"].get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = api["http"].get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN: it works offline
    assert "http://" not in page.text and "https://" not in page.text
    r = api["http"].get("/ui/?id=3", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"].endswith("ui?id=3")


def test_a_server_without_the_page_files_still_starts_and_says_what_is_missing(tmp_path):
    from starlette.testclient import TestClient

    from serving import web

    assert set(web.load_ui()) == set(web.UI_FILES)  # the checkout ships every file the page needs
    (tmp_path / "index.html").write_text("<!doctype html><title>only me</title>")
    client = TestClient(web.app(web.load_ui(tmp_path)))
    assert client.get("/ui").text.endswith("<title>only me</title>")
    r = client.get("/ui/app.js")
    assert r.status_code == 404 and "app.js is not installed" in r.json()[0]["error"]
