"""The largest answer the service gives is bounded and does not hold up the event loops: ``/search_batch`` caps
images x k at ``BYOL_MAX_RESULTS`` (413 naming it), and the largest allowed answer is written as JSON once, in the
index service's thread pool, while ``/healthz`` keeps answering. A real server over an index of 2,000 items."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import sample_images
from tests.serving import server as srv
from tests.serving.test_reload_swap import home

ITEMS = 2000
QUERIES, K = 256, 256  # 65,536 results: the default BYOL_MAX_RESULTS exactly


@pytest.fixture(scope="module")
def big(registered_bundle, tmp_path_factory):
    from index.durable import DurableIndex
    from serving import paths
    from serving.contract.encoder import OnnxEncoder
    from serving.store import bundle_path

    enc = OnnxEncoder(bundle_path(registered_bundle))
    root = tmp_path_factory.mktemp("answers")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(ITEMS, enc.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with home(root), DurableIndex.open(paths.index_dir(enc.version), dim=enc.dim, encoder_version=enc.version,
                                       factory="Flat", create=True) as index:
        index.add(vectors, [{"uri": f"mem:{i}", "label": "x"} for i in range(ITEMS)], enc.version)
    server = srv.start({"BYOL_HOME": str(root), "BYOL_MODEL_TAG": registered_bundle})
    try:
        yield server.url
    finally:
        server.stop()


def batch(n: int) -> list:
    return [("images", (f"{i}.png", srv.png(im))) for i, im in enumerate(sample_images(n, seed=7))]


def test_more_results_than_the_bound_are_refused_naming_it(big):
    r = httpx.post(big + "/search_batch", files=batch(QUERIES), data={"k": str(K + 1)}, timeout=60)
    assert r.status_code == 413 and "BYOL_MAX_RESULTS" in r.text and str(QUERIES * (K + 1)) in r.text


def healthz_during_search_batch(url: str, files: list) -> list[float]:
    """/healthz latencies (s) measured while one /search_batch of QUERIES x K results is made and answered."""
    stop, lat = threading.Event(), []

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                lat.append(time.perf_counter() - t0)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(0.2)
        before = len(lat)
        r = httpx.post(url + "/search_batch", files=files, data={"k": str(K)}, timeout=120)
        during = lat[before:]
    finally:
        stop.set()
        prober.join(30)
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    assert len(results) == QUERIES and {len(row) for row in results} == {K}
    assert len(during) >= 3, f"only {len(during)} /healthz answers while the answer was made"
    return during


def test_healthz_answers_within_100_ms_while_the_largest_allowed_answer_is_made(big):
    """Encoding 65,536 results as JSON takes ~0.1 s of one core (and building them as much again): on an event
    loop, one /healthz would wait that long. The best of three attempts must keep every /healthz under 100 ms (a
    scheduling hiccup on a busy CI box may spoil one attempt; a blocked loop spoils all three)."""
    files, worst = batch(QUERIES), []
    for _ in range(3):
        during = healthz_during_search_batch(big, files)
        worst.append(max(during))
        print(f"/healthz during a {QUERIES * K}-result /search_batch: {len(during)} answers, median "
              f"{statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms")
        if worst[-1] < 0.1:
            break
    assert min(worst) < 0.1, f"/healthz took up to {[round(w * 1000) for w in worst]} ms in each attempt"
