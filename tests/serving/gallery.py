"""A real server over an index built the way ``make demo`` builds it, in a BYOL_HOME of its own.

The index holds the first ``n`` Fashion-MNIST test images as dataset URIs (``fashion-mnist:test/<i>``, ids 0..n-1,
class names as labels), built by the real ``byol index build`` workflow; tests add uploads over HTTP on top (``sha256:``
URIs). Its own BYOL_HOME keeps this index and collection apart from the session's, where other modules index
pixel-identical test images under the same bundle version.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from tests.serving import server as srv

TOKEN = "gallery-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def build_index(tag: str, home: Path, fmnist_root: Path, n: int) -> dict:
    """``byol index build --data fashion-mnist --split test --limit n --factory Flat`` into ``home``."""
    from clients.workflows import indexing

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BYOL_HOME", str(home))
        return indexing.build(indexing.BuildConfig(model=tag, data="fashion-mnist", split="test",
                                                   data_root=str(fmnist_root), limit=n, factory="Flat",
                                                   progress=False))


@contextlib.contextmanager
def gallery(tag: str, home: Path, fmnist_root: Path, n: int = 120, env: dict | None = None):
    """Yields ``{"server", "http", "version", "size", "home"}``; the server is stopped on exit."""
    built = build_index(tag, home, fmnist_root, n)
    # the server reads dataset items from the default Fashion-MNIST root (the one the fmnist_root fixture checks)
    server = srv.start({"BYOL_HOME": str(home), "BYOL_MODEL_TAG": tag, "BYOL_ADMIN_TOKEN": TOKEN, **(env or {})})
    http = httpx.Client(base_url=server.url, timeout=60)
    try:
        yield {"server": server, "http": http, "version": built["version"], "size": built["size"], "home": home}
    finally:
        http.close()
        server.stop()


def bare_version(tag: str, work: Path, version: str = "20000103-000000-bare0000") -> str:
    """Register a copy of bundle ``tag`` as ``version``, which has no index: what a reload to it makes answer 409."""
    import json
    import shutil

    from serving.store import bundle_path, register_bundle

    other = work / "bare"
    shutil.copytree(bundle_path(tag), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] = version
    (other / "manifest.json").write_text(json.dumps(manifest))
    register_bundle(other)
    return version


def error_of(resp: httpx.Response) -> str:
    body = resp.json()
    return str((body[0] if isinstance(body, list) else body)["error"])
