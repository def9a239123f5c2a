"""Test helpers around a real server: the launcher (``clients.local_server``) and a prepared model version."""

from __future__ import annotations

from contextlib import contextmanager

from clients.local_server import REPO, SERVICE, Server, command, descendants, free_port, rss_kb, start, status_kb  # noqa: F401
from serving.contract.image import encode_png as png  # noqa: F401  (what a client uploads)


def prepare_version(tag: str, n_fit: int = 200) -> dict:
    """Give bundle ``tag`` an (empty) durable index and a fitted probe + kNN, as ``byol index/probe`` would.

    Returns ``{"version", "bundle_dir", "encoder", "probe", "knn"}`` for computing expected answers locally.
    """
    import numpy as np

    from index.durable import DurableIndex
    from index.knn import KnnClassifier
    from index.probe import LinearProbe
    from serving import paths
    from serving.contract.encoder import OnnxEncoder
    from serving.contract.image import load
    from serving.store import bundle_path
    from tests.conftest import sample_images

    bdir = bundle_path(tag)
    enc = OnnxEncoder(bdir)
    version = enc.version
    idir = paths.index_dir(version)
    if not DurableIndex.exists(idir):
        DurableIndex.open(idir, dim=enc.dim, encoder_version=version, factory="Flat", create=True).close()
    imgs = sample_images(n_fit)
    x = enc.embed(np.stack([load(png(im), enc.input_size) for im in imgs]))
    y = np.arange(len(x)) % 3  # arbitrary labels: the test checks the server answers like the local classifier
    classes = ["shirt", "shoe", "bag"]
    probe = LinearProbe.fit(x, y, classes, encoder_version=version)
    knn = KnnClassifier(x, y, classes, k=5, encoder_version=version)
    pdir = paths.probe_dir(version)
    pdir.mkdir(parents=True, exist_ok=True)
    probe.save(pdir)
    knn.save(pdir)
    return {"version": version, "bundle_dir": bdir, "encoder": enc, "probe": probe, "knn": knn}


@contextmanager
def live(tag: str, env: dict):
    """A real server of bundle ``tag`` (prepared with a small probe) under ``env``, with an HTTP client →
    ``{"version", ..., "server", "http", "port"}``; stopped on exit."""
    import httpx

    local = prepare_version(tag, n_fit=30)
    server = start({**env, "BYOL_MODEL_TAG": tag})
    http = httpx.Client(base_url=server.url, timeout=60)
    try:
        yield {**local, "server": server, "http": http, "port": int(server.url.rsplit(":", 1)[1])}
    finally:
        http.close()
        server.stop()
