"""The Bento, for real: ``bentoml build`` (bentofile.yaml and the GPU variant), then the built Bento served and queried.

Two ways to serve it: from the model store (``bentoml serve byol_embed:<tag>``, what a server box runs), and as a
container runs it — the exported Bento directory with its packed encoder and an empty BENTOML_HOME — with the index
mounted through BYOL_HOME (bentofile.yaml says why it is not packed). No Docker here: the image itself is built by
``bentoml containerize`` from this same Bento, so everything but the base image is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from clients.local_server import Server, free_port
from serving.contract.image import encode_png, load
from tests.conftest import REPO, sample_images

pytestmark = pytest.mark.slow
N_INDEXED = 24


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BYOL_MODEL_TAG")}
    return {**env, "BENTOML_DO_NOT_TRACK": "true", **extra}


def _bentoml(*args: str, env: dict | None = None, cwd: Path = REPO) -> str:
    r = subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=cwd, env=env or _env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"bentoml {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def build(bentofile: str, model_tag: str) -> str:
    out = _bentoml("build", "-f", bentofile, "-o", "tag", env=_env(BYOL_MODEL_TAG=model_tag))
    return next(line for line in out.splitlines() if line.startswith("__tag__:")).split(":", 1)[1]


def bento_dir(tag: str) -> Path:
    name, version = tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


@pytest.fixture(scope="module")
def mounted_home(registered_bundle, tmp_path_factory) -> tuple[Path, str]:
    """A BYOL_HOME as a container would mount it: the index of the packed encoder's version over N_INDEXED images."""
    from index import writes
    from index.collection import Collection
    from index.vector_index import VectorIndex
    from serving.contract.encoder import OnnxEncoder
    from serving.store import bundle_path

    home = tmp_path_factory.mktemp("mounted-byol-home")
    enc = OnnxEncoder(bundle_path(registered_bundle))
    images = sample_images(N_INDEXED)
    vectors = enc.embed(np.stack([load(encode_png(im), enc.input_size) for im in images]))
    metas = [{"uri": f"sample:{i}", "label": f"label-{i % 3}"} for i in range(N_INDEXED)]
    index = VectorIndex.build(vectors, metas, enc.version, "Flat")
    writes.publish(index, home / "indexes" / enc.version, Collection(home / "collection"))
    return home, enc.version


@pytest.fixture(scope="module")
def bento(registered_bundle) -> str:
    return build("bentofile.yaml", registered_bundle)


def serve(target: str, env: dict, cwd: Path, timeout: float = 120.0) -> Server:
    """``bentoml serve TARGET`` with no --host (the Bento's own default must apply), outside the checkout."""
    port = free_port()
    log_path = cwd / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", target, "--port", str(port)], cwd=cwd,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve {target} exited {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    server.stop()
    raise AssertionError(f"bentoml serve {target} not ready after {timeout:.0f} s:\n{server.log()[-3000:]}")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket LISTENing on ``port`` (from /proc/net/tcp{,6}: no reliance on another NIC)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def check_embed_and_search(server: Server, version: str, registered_bundle: str) -> None:
    from serving.contract.encoder import OnnxEncoder
    from serving.store import bundle_path

    enc = OnnxEncoder(bundle_path(registered_bundle))
    query = encode_png(sample_images(N_INDEXED)[5])
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/embed", files={"image": ("q.png", query, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == version and body["dim"] == enc.dim
        np.testing.assert_allclose(body["embedding"], enc.embed(load(query, enc.input_size)[None])[0], atol=1e-5)
        r = http.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "3"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3 and results[0]["metadata"]["uri"] == "sample:5" and results[0]["score"] > 0.999


def test_the_bento_packs_the_service_and_the_encoder_and_nothing_of_training(bento, registered_bundle):
    root = bento_dir(bento)
    src = {str(p.relative_to(root / "src")) for p in (root / "src").rglob("*") if p.is_file()}
    assert {"serving/service.py", "serving/contract/encoder.py", "index/durable.py"} <= src
    ui = REPO / "serving" / "ui"
    assert {str(p.relative_to(REPO)) for p in ui.rglob("*") if p.is_file() and "__pycache__" not in p.parts} <= src
    assert not {p for p in src if p.startswith(("training/", "tests/", "clients/", "bench/"))}
    info = yaml.safe_load((root / "bento.yaml").read_text())
    services = {svc["name"]: svc for svc in info["services"]}
    assert set(services) == {"byol_embed", "byol_index"}  # both services of the split travel in one Bento
    svc, index = services["byol_embed"], services["byol_index"]
    assert [m["tag"] for m in svc["models"]] == [registered_bundle] and not index.get("models")
    assert svc["config"]["http"]["host"] == "127.0.0.1"
    assert index["config"]["workers"] == 1  # the one index owner
    requirements = (root / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime>=" in requirements and "faiss-cpu" in requirements and "torch" not in requirements


def test_the_built_bento_serves_embed_and_search_on_loopback_only(bento, registered_bundle, mounted_home, tmp_path):
    """Served from a store that has since received a newer encoder: the Bento still serves the one it packed."""
    from serving.store import register_bundle
    from tests.conftest import make_bundle

    home, version = mounted_home
    register_bundle(make_bundle(tmp_path / "newer", seed=1))
    server = serve(bento, _env(BYOL_HOME=str(home)), tmp_path)
    try:
        check_embed_and_search(server, version, registered_bundle)
        port = int(server.url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0100007F"}, "the Bento must bind 127.0.0.1 unless --host says otherwise"
    finally:
        server.stop()


def test_the_exported_bento_serves_like_a_container(bento, registered_bundle, mounted_home, tmp_path):
    """What ``docker run -v STATE:/byol -e BYOL_HOME=/byol IMAGE`` does: serve the Bento's own directory (its models/
    folder is the model store) with an empty BENTOML_HOME and no BYOL_MODEL_TAG."""
    home, version = mounted_home
    archive = tmp_path / "byol_embed.bento"
    _bentoml("export", bento, str(archive))
    unpacked = tmp_path / "bento"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    assert (unpacked / "models" / "byol-encoder" / version / "encoder.onnx").is_file()
    env = _env(BYOL_HOME=str(home), BENTOML_HOME=str(tmp_path / "empty-bentoml-home"))
    server = serve(str(unpacked), env, unpacked)
    try:
        check_embed_and_search(server, version, registered_bundle)
    finally:
        server.stop()


def test_the_gpu_bento_builds_on_a_cuda_image_with_the_gpu_runtimes(registered_bundle):
    root = bento_dir(build("bentofile-gpu.yaml", registered_bundle))
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert "nvidia/cuda:12." in base and "cudnn-runtime" in base, base
    requirements = (root / "env" / "python" / "requirements.txt").read_text().split()
    assert any(r.startswith("onnxruntime-gpu") for r in requirements)
    assert any(r.startswith("faiss-gpu") for r in requirements)
    assert not any(r.startswith(("onnxruntime>", "onnxruntime=", "faiss-cpu", "torch")) for r in requirements)
