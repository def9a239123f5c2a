"""Serving another graph of the bundle and sizing ONNX Runtime's threads, against a real server: the int8 graph
``byol export --int8`` adds is served only when ``BYOL_ENCODER_FILE`` asks for it, and says so on ``/info``; a
malformed ``BYOL_ORT_THREADS`` stops the server at start with one line."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from serving.contract.image import load
from tests.conftest import sample_images, tiny_encoder
from tests.serving import server as srv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_tag(tmp_path_factory):
    """tiny_encoder(5) exported with its int8 twin, registered (a version of its own)."""
    from serving.store import register_bundle
    from training.export import export_bundle

    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_bundle(tiny_encoder(5), out, parity_images=sample_images(16, seed=5), int8=True)
    return register_bundle(out), out


def test_the_int8_graph_is_served_when_asked_for(int8_tag):
    from serving.contract.encoder import OnnxEncoder
    from training.export import INT8_FILE

    tag, bundle = int8_tag
    data = srv.png(sample_images(1, seed=9)[0])
    server = srv.start({"BYOL_MODEL_TAG": tag, "BYOL_ENCODER_FILE": INT8_FILE, "BYOL_ORT_THREADS": "1"})
    try:
        info = httpx.get(server.url + "/info", timeout=30).json()
        got = httpx.post(server.url + "/embed", files={"image": ("q.png", data)}, timeout=30).json()["embedding"]
    finally:
        server.stop()
    local = OnnxEncoder(bundle, onnx_file=INT8_FILE)
    fp32 = OnnxEncoder(bundle).embed(load(data, 28)[None])[0]
    assert info["graph"] == INT8_FILE
    np.testing.assert_allclose(got, local.embed(load(data, 28)[None])[0], atol=1e-5)
    assert np.abs(np.asarray(got) - fp32).max() > 1e-6  # it is another graph than fp32's


def test_the_fp32_graph_is_served_by_default(int8_tag):
    tag, _ = int8_tag
    server = srv.start({"BYOL_MODEL_TAG": tag})
    try:
        assert httpx.get(server.url + "/info", timeout=30).json()["graph"] == "encoder.onnx"
    finally:
        server.stop()


def test_a_malformed_thread_count_stops_the_server_at_start(registered_bundle):
    with pytest.raises(RuntimeError, match="server exited") as err:
        srv.start({"BYOL_MODEL_TAG": registered_bundle, "BYOL_ORT_THREADS": "many"}, timeout=60)
    failing = [ln for ln in str(err.value).splitlines() if "BYOL_ORT_THREADS must be an integer" in ln]
    assert len(failing) == 1, str(err.value)[-2000:]
