"""Starting the server: a corrupt bundle fails at start with one clear line; ``byol serve`` serves and stops clean."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

from tests.serving import server as srv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corrupt_tag(tiny_bundle, tmp_path_factory):
    """A bundle registered intact, then damaged inside the model store (as a bad disk or a bad copy would)."""
    from serving.store import bundle_path, register_bundle

    src = tmp_path_factory.mktemp("corrupt") / "bundle"
    shutil.copytree(tiny_bundle, src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["version"] = "19990101-000000-corrupt0"
    (src / "manifest.json").write_text(json.dumps(manifest))
    tag = register_bundle(src)
    onnx = bundle_path(tag) / "encoder.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(onnx.read_bytes()[:200])
    return tag


def test_corrupt_bundle_fails_byol_serve_with_one_line(corrupt_tag):
    r = subprocess.run([sys.executable, "-m", "clients.cli", "serve", "--model", corrupt_tag, "--port", "1"],
                       cwd=srv.REPO, capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "byol serve: error:" in lines[0] and "corrupt" in lines[0]


def test_corrupt_bundle_stops_bentoml_serve_at_start(corrupt_tag):
    """Plain `bentoml serve` too: the deployment hook fails the main process before any worker starts."""
    with pytest.raises(RuntimeError, match="server exited") as err:
        srv.start({"BYOL_MODEL_TAG": corrupt_tag}, timeout=60)
    failing = [ln for ln in str(err.value).splitlines() if "does not match its manifest hash" in ln]
    assert len(failing) == 1 and failing[0].startswith("Error: [serve] `serve` failed: bundle")


def test_byol_serve_answers_and_stops_on_sigterm(registered_bundle):
    port = srv.free_port()
    cmd = [sys.executable, "-m", "clients.cli", "serve", "--model", registered_bundle, "--port", str(port)]
    server = srv.start(cmd=cmd, port=port)
    try:
        import httpx

        info = httpx.get(server.url + "/info", timeout=10).json()
        assert "byol-encoder:" + info["version"] == registered_bundle
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()[-2000:]


def test_service_imports_no_torch():
    """A CPU serving box installs no torch: importing the service (and everything it loads) must not need it."""
    code = ("import sys; import serving.service, clients.workflows.serve, clients.client; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=srv.REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
