"""The split service with two embedding workers in front of the one index service (serving.service, serving.following).

Adds made through both workers land in the one index and are found by searches through both; a reload makes every
worker follow before it answers; vectors of a version the index does not serve are refused by the index service and
never written. Real ``bentoml serve``, real HTTP, one fresh connection a request so that both workers get some.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.service import WORKER_HEADER
from tests.conftest import sample_images
from tests.serving import server as srv
from tests.serving.gallery import AUTH, TOKEN

WORKERS = 2
TRIES = 200  # fresh connections before giving up on reaching both workers


@pytest.fixture(scope="module")
def split(registered_bundle, tmp_path_factory):
    """A server of a version of its own (a copy of the session's bundle): its index holds only this module's adds,
    so an image's nearest neighbour is itself, not a near-twin another module added to the shared version."""
    from serving.store import bundle_path, register_bundle

    own = copy_version(bundle_path(registered_bundle), "20000102-000000-5p1it000", tmp_path_factory.mktemp("own"))
    local = srv.prepare_version(register_bundle(own))
    env = {"BYOL_MODEL_TAG": local["version"], "BYOL_ADMIN_TOKEN": TOKEN, "BYOL_EMBED_WORKERS": str(WORKERS),
           "BYOL_ORT_THREADS": "1", "BYOL_FOLLOW_S": "0.2"}
    server = srv.start(env)
    try:
        yield {**local, "server": server, "url": server.url}
    finally:
        server.stop()


def copy_version(bundle, version: str, where):
    """A copy of ``bundle`` under another version name (same graph), not yet registered."""
    other = where / version
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = version
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on its own connection: the kernel hands a new connection to either worker."""
    with httpx.Client(base_url=url, timeout=30, headers={"Connection": "close"}) as client:
        return client.request(method, path, **kwargs)


def spread(url: str, method: str, path: str, calls: list[dict]) -> list[httpx.Response]:
    """The calls, 8 at a time on fresh connections (concurrency spreads them over the workers)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda kw: fresh(url, method, path, **kw), calls))


def test_two_workers_start_and_each_counts_as_alive(split):
    seen = {}
    for _ in range(TRIES):
        info = fresh(split["url"], "GET", "/info").json()
        seen[info["worker"]] = info
        if len(seen) == WORKERS:
            break
    assert len(seen) == WORKERS, f"only worker(s) {sorted(seen)} answered {TRIES} fresh connections"
    for info in seen.values():
        assert set(info["workers"]) == set(seen)  # the index service hears from both
        assert info["version"] == info["index_version"] == split["version"]


def test_adds_through_both_workers_land_in_one_index_and_are_found_through_both(split):
    pngs = [srv.png(im) for im in sample_images(64, seed=2024)]
    added = spread(split["url"], "POST", "/index/add",
                   [{"files": [("images", (f"{i}.png", data))], "headers": AUTH} for i, data in enumerate(pngs)])
    assert all(r.status_code == 200 for r in added), [r.text for r in added if r.status_code != 200][:2]
    by_worker = {r.headers[WORKER_HEADER] for r in added}
    assert len(by_worker) == WORKERS, f"all 64 adds went to worker(s) {by_worker}"
    ids = [r.json()["ids"][0] for r in added]
    assert len(set(ids)) == len(pngs)  # one index hands out the ids: none given twice

    found = spread(split["url"], "POST", "/search",
                   [{"files": {"image": (f"{i}.png", data)}, "data": {"k": "1"}} for i, data in enumerate(pngs)])
    assert all(r.status_code == 200 for r in found), [r.text for r in found if r.status_code != 200][:2]
    assert len({r.headers[WORKER_HEADER] for r in found}) == WORKERS
    top = [r.json()["results"][0] for r in found]
    assert [hit["id"] for hit in top] == ids  # each image finds itself, whichever worker added or searched
    assert all(hit["score"] > 0.999 for hit in top)
    sizes = {fresh(split["url"], "GET", "/info").json()["index"]["size"] for _ in range(8)}
    assert len(sizes) == 1 and sizes.pop() >= len(pngs)


def test_a_reload_answers_once_every_worker_follows(split, tmp_path):
    from serving.store import register_bundle

    other = "20000101-000000-5p1it000"
    register_bundle(copy_version(split["bundle_dir"], other, tmp_path))
    try:
        r = fresh(split["url"], "POST", "/admin/reload", headers=AUTH, json={"version": other})
        assert r.status_code == 200, r.text
        assert r.json()["followed"] == r.json()["workers"] == WORKERS
        x = srv.png(sample_images(1, seed=5)[0])
        answers = spread(split["url"], "POST", "/embed", [{"files": {"image": ("x.png", x)}}] * 32)
        assert {a.json()["version"] for a in answers} == {other}  # no worker kept the old encoder
    finally:
        r = fresh(split["url"], "POST", "/admin/reload", headers=AUTH, json={"version": split["version"]})
    assert r.status_code == 200 and r.json()["followed"] == WORKERS


def test_the_index_service_refuses_vectors_of_another_version(split):
    """What a worker holding an old encoder would send: the index answers stale and writes nothing."""
    import asyncio

    from serving.index_service import INDEX_SERVICE

    async def call():
        from _bentoml_impl.client import RemoteProxy

        mapping = json.loads(srv_env(split["server"])["BENTOML_RUNNER_MAP"])
        proxy = RemoteProxy(mapping[INDEX_SERVICE], media_type="application/json")  # as any other caller
        await proxy.__aenter__()  # as BentoML enters a dependency's proxy (it has no __aexit__: close() ends it)
        try:
            vec = (np.ones((1, split["encoder"].dim)) / np.sqrt(split["encoder"].dim)).tolist()
            before = (await proxy.to_async.info())["index"]["size"]
            added = await proxy.to_async.add(vectors=vec, version="19990101-000000-01d00000", datas=["x"])
            searched = await proxy.to_async.search(vectors=vec, version="19990101-000000-01d00000", k=3)
            after = (await proxy.to_async.info())["index"]["size"]
            return before, added, searched, after
        finally:
            await proxy.close()

    before, added, searched, after = asyncio.run(call())
    assert added == {"stale": split["version"]} and searched == {"stale": split["version"]}
    assert after == before


def srv_env(server) -> dict:
    """The environment BentoML gave the server's workers (its runner map names the index service's socket)."""
    from pathlib import Path

    for pid in srv.descendants(server.proc.pid):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
        if "BENTOML_RUNNER_MAP" in env:
            return env
    pytest.fail("no worker of the server has BENTOML_RUNNER_MAP")
