"""Hot swaps against a real server: the old version's index is closed and memory stays flat over 20 reloads, and
writes made while a reload runs reach the index served after it (none lost, no removed item back).

The server gets a home of its own (``BYOL_HOME``; the model store stays the session's) so its collection holds only
what this module puts there: a reload reconciles the incoming index with the collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving import server as srv

pytestmark = pytest.mark.slow
TOKEN = "swap-test-token-16"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_ITEMS = 10_000  # per version: ~9 MB of index each, so a leaked index per reload would show in the RSS
N_VERSIONS = 20


@contextmanager
def home(path: Path):
    before = os.environ["BYOL_HOME"]
    os.environ["BYOL_HOME"] = str(path)
    try:
        yield
    finally:
        os.environ["BYOL_HOME"] = before


def register_copy(bundle_dir: Path, version: str, tmp: Path) -> str:
    """The same encoder under another version (created long ago, so it never becomes the store's 'latest')."""
    from serving.store import register_bundle

    copy = tmp / version
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(version=version, created_at="2000-01-01T00:00:00Z")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    register_bundle(copy)
    return version


@pytest.fixture(scope="module")
def swap(registered_bundle, tmp_path_factory):
    from index import writes
    from index.collection import Collection
    from index.vector_index import VectorIndex
    from serving import paths
    from serving.contract.encoder import OnnxEncoder
    from serving.store import bundle_path

    tmp = tmp_path_factory.mktemp("swap")
    bdir = bundle_path(registered_bundle)
    base = OnnxEncoder(bdir).version
    versions = [register_copy(bdir, f"20000103-0000{i:02d}-5wap{i:04d}", tmp) for i in range(N_VERSIONS)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_ITEMS, OnnxEncoder(bdir).dim)).astype(np.float32)
    metas = [{"uri": f"mem:{i}", "label": "synthetic"} for i in range(N_ITEMS)]
    with home(tmp / "home"):
        store = Collection(paths.collection_dir())
        for n, version in enumerate([base, *versions]):
            index = VectorIndex.build(vectors, metas, version, "Flat")
            writes.publish(index, paths.index_dir(version), store, record=n == 0)
    env = {"BYOL_HOME": str(tmp / "home"), "BYOL_MODEL_TAG": registered_bundle, "BYOL_ADMIN_TOKEN": TOKEN}
    server = srv.start(env)
    http = httpx.Client(base_url=server.url, timeout=120)
    try:
        yield {"server": server, "http": http, "base": base, "versions": versions}
    finally:
        http.close()
        server.stop()


def worker_rss_kb(server) -> int:
    """Resident memory of the server's largest process (the embedding worker or the index service), from /proc."""
    return max(srv.rss_kb([pid]) for pid in srv.descendants(server.proc.pid))


def reload(swap, version: str) -> None:
    r = swap["http"].post("/admin/reload", headers=AUTH, json={"version": version})
    assert r.status_code == 200 and r.json()["version"] == version, r.text


def test_old_indexes_are_closed_and_memory_stays_flat_over_20_reloads(swap):
    query = srv.png(np.zeros((28, 28, 3), np.uint8))
    versions, still_open = swap["versions"], []
    for n, version in enumerate(versions):
        reload(swap, version)
        r = swap["http"].post("/search", files={"image": ("q.png", query)}, data={"k": "3"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
        still_open.append(swap["http"].get("/info").json().get("open_indexes"))
        if n == 3:
            warm = worker_rss_kb(swap["server"])
    end = worker_rss_kb(swap["server"])
    print(f"worker RSS: {warm} kB after 4 reloads, {end} kB after {len(versions)}")
    assert end <= 1.10 * warm, f"worker RSS grew from {warm} kB after warm-up to {end} kB after 20 reloads"
    assert still_open == [{v: 1} for v in versions]  # each swap closed the index of the version before


def random_png(rng) -> bytes:
    return srv.png(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))


def uri_of(image: bytes) -> str:
    return "sha256:" + hashlib.sha256(image).hexdigest()


def test_writes_made_during_a_reload_reach_the_index_served_after_it(swap):
    """Adds and removals keep coming while the server loads B, reconciles B's index with the collection (here: 1,500
    images added to A meanwhile, a long reconcile) and swaps: every acknowledged add is found in B after the swap,
    and no acknowledged removal is back."""
    http, rng = swap["http"], np.random.default_rng(99)
    a, b = swap["versions"][-1], swap["base"]
    reload(swap, a)
    backlog = [random_png(rng) for _ in range(1500)]  # in A (and the collection) only: B must reconcile them
    for lo in range(0, len(backlog), 250):
        r = http.post("/index/add", headers=AUTH, files=[("images", (f"{i}.png", im)) for i, im in
                                                         enumerate(backlog[lo:lo + 250])])
        assert r.status_code == 200, r.text
    added, removed, errors, stop = {}, set(), [], threading.Event()

    def writer(seed: int) -> None:
        local = np.random.default_rng(seed)
        with httpx.Client(base_url=swap["server"].url, timeout=120) as c:
            while not stop.is_set():
                image = random_png(local)
                r = c.post("/index/add", headers=AUTH, files=[("images", ("w.png", image))])
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                added[uri_of(image)] = image
                if local.random() < 0.3:  # remove one we added, by its stable key
                    uri = uri_of(image)
                    r = c.post("/index/remove", headers=AUTH, json={"uris": [uri]})
                    if r.status_code == 200:
                        removed.add(uri)
                    else:
                        errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        while len(added) < 10:  # writes are flowing before the reload starts
            assert not errors, errors[:3]
            threading.Event().wait(0.05)
        reload(swap, b)
        count = len(added)
        while len(added) < count + 10:  # and after it
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert http.get("/info").json()["version"] == b
    lost, back = [], []
    for uri, image in [*added.items(), *((u, backlog[i]) for i, u in enumerate(map(uri_of, backlog[:50])))]:
        top = http.post("/search", files={"image": ("q.png", image)}, data={"k": "1"}).json()["results"][0]
        found = top["metadata"]["uri"] == uri
        if uri in removed and found:
            back.append(uri)
        elif uri not in removed and not found:
            lost.append(uri)
    assert not lost and not back, f"{len(lost)} acknowledged adds lost, {len(back)} removed items back " \
                                  f"(of {len(added)} added, {len(removed)} removed during the reload)"
