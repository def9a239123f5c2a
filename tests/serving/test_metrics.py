"""The project's metrics on /metrics against a real server (exact counts of what the test sent), plus the small
pure parts behind them (route labels, the batcher's callback)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.batching import MicroBatcher
from serving.metrics import ITEM_LABEL, UNROUTED, route_label
from tests.serving import server as srv
from tests.serving.gallery import AUTH, gallery

N = 60


@pytest.fixture(scope="module")
def api(registered_bundle, fmnist_root, tmp_path_factory):
    with gallery(registered_bundle, tmp_path_factory.mktemp("metrics-home"), fmnist_root, n=N) as state:
        yield state


def scrape(api) -> dict[str, list]:
    r = api["http"].get("/metrics")
    assert r.status_code == 200
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.mark.slow
def test_metrics_count_exactly_what_was_served(api, fmnist_test):
    http = api["http"]
    png = [srv.png(im) for im in fmnist_test.images[:5]]
    with ThreadPoolExecutor(5) as pool:  # concurrent singles: the micro-batcher may merge them
        codes = list(pool.map(lambda d: http.post("/embed", files={"image": ("x.png", d)}).status_code, png))
    assert codes == [200] * 5
    assert http.post("/search", files={"image": ("q.png", png[0])}, data={"k": "3"}).status_code == 200
    assert http.post("/search_by_id", json={"id": 4, "k": 3}).status_code == 200
    r = http.post("/search_batch", files=[("images", (f"{i}.png", d)) for i, d in enumerate(png[:3])])
    assert r.status_code == 200
    r = http.post("/index/add", headers=AUTH, files=[("images", ("new.png", srv.png(fmnist_test.images[500])))])
    assert r.status_code == 200, r.text
    for item in (1, 2, 2, 987654):
        http.get(f"/items/{item}/thumbnail")

    m = scrape(api)
    info = http.get("/info").json()
    assert value(m["byol_index_size"], "byol_index_size") == info["index"]["size"] == N + 1
    assert value(m["byol_served_version_info"], "byol_served_version_info", version=api["version"]) == 1
    # embed, search, search_batch, index/add: each image embedded once; search_by_id reuses the indexed vector
    images = 5 + 1 + 3 + 1
    requests = 5 + 1 + 1 + 1
    batches = value(m["byol_micro_batch_size"], "byol_micro_batch_size_count")
    assert value(m["byol_micro_batch_size"], "byol_micro_batch_size_sum") == images and 1 <= batches <= requests
    assert value(m["byol_embed_latency_seconds"], "byol_embed_latency_seconds_count") == requests
    assert value(m["byol_embed_latency_seconds"], "byol_embed_latency_seconds_sum") > 0
    for endpoint in ("search", "search_by_id", "search_batch"):
        assert value(m["byol_search_latency_seconds"], "byol_search_latency_seconds_count", endpoint=endpoint) == 1
    # BentoML's request metrics name the thumbnail route by its template, never by item id
    totals = m["bentoml_service_request"]
    thumbs = [s for s in totals if s.name == "bentoml_service_request_total" and "thumbnail" in s.labels["endpoint"]]
    assert {s.labels["endpoint"] for s in thumbs} == {ITEM_LABEL}
    assert sum(s.value for s in thumbs) == 4 and {s.labels["http_response_code"] for s in thumbs} == {"200", "404"}


@pytest.mark.slow
def test_removal_lowers_the_index_size(api, fmnist_test):
    r = api["http"].post("/index/add", headers=AUTH, files=[("images", ("gone.png", srv.png(fmnist_test.images[501])))])
    (item,) = r.json()["ids"]
    before = value(scrape(api)["byol_index_size"], "byol_index_size")
    r = api["http"].post("/index/remove", headers=AUTH, json={"ids": [item], "version": api["version"]})
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert value(scrape(api)["byol_index_size"], "byol_index_size") == before - 1


def served_router():
    """The served app's routing as BentoML 1.4.39 builds it (system routes, POST API routes, the OpenAPI page and
    its static files, serving.web's GET app passively mounted at /), without loading a model."""
    from _bentoml_impl.server.mount import PassiveMount
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.staticfiles import StaticFiles

    from serving import web
    from serving.upload_guard import ROUTES

    async def nothing(request):
        raise AssertionError

    system = [Route(p, nothing) for p in ("/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json")]
    api = [Route(p, nothing, methods=["POST"]) for p in ROUTES]
    app = Starlette(routes=[*system, *api, PassiveMount("/", web.app({}))])
    app.mount("/static_content", StaticFiles(directory=".", check_dir=False))
    app.add_route("/", nothing)
    return app


ROUTER = served_router()


@pytest.mark.parametrize("path,label", [
    ("/items/12/thumbnail", ITEM_LABEL), ("/items/abc/thumbnail", ITEM_LABEL), ("/items//thumbnail", UNROUTED),
    ("/search", "/search"), ("/index/add", "/index/add"), ("/ui", "/ui"), ("/ui/", "/ui/"), ("/info", "/info"),
    ("/metrics", "/metrics"), ("/readyz", "/readyz"), ("/", "/"), ("/docs.json", "/docs.json"),
    ("/static_content/swagger-ui.css", "/static_content/{path}"), ("/static_content/../../x", "/static_content/{path}"),
    ("/items/1/thumbnail/x", UNROUTED), ("/wp-login.php", UNROUTED), ("/x1", UNROUTED), ("/ui/x", UNROUTED),
    ("/info/", UNROUTED), ("", UNROUTED), ("/" + "a" * 5000, UNROUTED),
])
def test_route_labels_known_paths_as_themselves_and_any_other_by_one_label(path, label):
    for method in ("GET", "POST"):  # a path routed for another method keeps its label (a 405, bounded)
        assert route_label({"type": "http", "method": method, "path": path, "app": ROUTER}) == label


def test_without_an_app_in_the_scope_nothing_is_routed():
    assert route_label({"type": "http", "method": "GET", "path": "/search"}) == UNROUTED


def test_a_websocket_is_unrouted():
    assert route_label({"type": "websocket", "path": "/x", "app": ROUTER}) == UNROUTED


def test_micro_batcher_reports_each_batch_size():
    seen: list[int] = []
    batcher = MicroBatcher(lambda x: np.zeros((len(x), 2), np.float32), max_batch_size=8, max_wait_ms=20,
                           on_batch=seen.append)

    async def main():
        return await asyncio.gather(*(batcher.submit(np.zeros((n, 2, 2, 3), np.uint8)) for n in (1, 2, 3, 4)))

    outs = asyncio.run(main())
    assert [len(o) for o in outs] == [1, 2, 3, 4]
    assert sum(seen) == 10 and seen == batcher.batch_sizes and max(seen) <= 8


def test_a_failing_batch_callback_never_stops_the_batcher():
    def boom(_):
        raise RuntimeError("metric backend down")

    batcher = MicroBatcher(lambda x: np.ones((len(x), 2), np.float32), on_batch=boom)
    out = asyncio.run(batcher.submit(np.zeros((3, 2, 2, 3), np.uint8)))
    assert out.shape == (3, 2)
