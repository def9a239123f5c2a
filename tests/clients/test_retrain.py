"""Retraining lifecycle: new images → retrain → gate → re-index → promote → hot swap, and crash safety.

Everything runs for real: BYOL training (tiny), ONNX export, the BentoML server, FAISS, the retrain command.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.cli import main as byol
from serving import paths
from tests.conftest import REPO
from tests.serving import server as srv

pytestmark = pytest.mark.slow
TOKEN = "retrain-test-token"
TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=32", "train.max_minutes=none", "train.knn_every=0", "train.progress=false",
        "train.device=cpu", "optim.warmup_fraction=0.2"]
EVAL = ["--eval-data", "fashion-mnist", "--eval-max-train", "500", "--eval-max-test", "300"]  # the labelled gate


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        (folder / f"new_{i:03d}.png").write_bytes(srv.png(im))
    return folder


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, fmnist_root):
    """A served version built the way a user would: train → export → index → probe → promote."""
    from training.config import apply_overrides, preset
    from training.train import train

    run = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(preset("fmnist-demo"),
                          [*TINY, "train.steps=12", "train.checkpoint_every=0", "data.max_images=2000"])
    train(cfg, run)
    assert byol(["export", "--encoder", str(run / "encoder.pt")]) == 0
    from serving.contract.bundle import read_bundle
    from serving.store import bundle_path

    _, manifest = read_bundle(bundle_path("latest"))
    version = manifest.version
    assert paths.checkpoint_file(version).is_file(), "export must keep the training state for retrain"
    assert byol(["index", "build", "--model", version, "--data", "fashion-mnist", "--split", "test",
                 "--limit", "300", "--quiet"]) == 0
    assert byol(["probe", "fit", "--model", version, "--data", "fashion-mnist", "--max-train", "500",
                 "--max-test", "200"]) == 0
    assert byol(["promote", version]) == 0
    return {"version": version, "manifest": manifest}


def test_no_new_data_exits_zero_with_message(deployment, tmp_path, capsys):
    empty_of_new = _write_pngs(tmp_path / "seen", np.zeros((1, 28, 28, 3), np.uint8))
    from clients.workflows.retrain import mark_seen

    mark_seen({hashlib.sha256((empty_of_new / "new_000.png").read_bytes()).hexdigest()})
    assert byol(["retrain", "--new-data", str(empty_of_new)]) == 0
    assert "no new images" in capsys.readouterr().out


def test_lock_keeps_a_second_run_out(deployment, tmp_path, capsys):
    from filelock import FileLock

    paths.retrain_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.retrain_dir() / "lock")):
        code = subprocess.run([sys.executable, "-m", "clients.cli", "retrain", "--new-data", str(tmp_path)],
                              cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    assert "another byol retrain is running" in code.stdout


def test_kill9_during_retrain_leaves_served_version_and_next_run_recovers(deployment, tmp_path, fmnist_test):
    served = deployment["version"]
    before_release = paths.release_file().read_text()
    before_index = _tree_digest(paths.index_dir(served))
    new = _write_pngs(tmp_path / "incoming", fmnist_test.images[1000:1040])
    args = ["retrain", "--new-data", str(new), "--steps", "80", "--no-promote",
            *sum((["--set", o] for o in [*TINY, "train.checkpoint_every=2"]), [])]
    proc = subprocess.Popen([sys.executable, "-m", "clients.cli", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = paths.retrain_dir() / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(runs.glob("*/checkpoint.pt")):
        assert proc.poll() is None, "retrain ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert list(runs.glob("*/checkpoint.pt")), "no checkpoint written before the kill"
    assert paths.release_file().read_text() == before_release
    assert _tree_digest(paths.index_dir(served)) == before_index
    # the same command again resumes the interrupted run from its checkpoint and finishes it
    assert byol(args) == 0
    run = next(runs.glob("*/candidate.json")).parent
    assert json.loads((run / "summary.json").read_text())["metrics"]["steps"] == 80
    assert json.loads(paths.release_file().read_text())["current"] == served


def test_retrain_gate_promote_and_hot_swap_without_errors(deployment, tmp_path, fmnist_test):
    from serving.contract.encoder import OnnxEncoder
    from serving.contract.image import load
    from serving.store import bundle_path

    old = deployment["version"]
    server = srv.start({"BYOL_ADMIN_TOKEN": TOKEN})
    stop, results, errors = threading.Event(), [], []
    probe_img = srv.png(fmnist_test.images[5])

    def loop(route: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                try:
                    files = {"image": ("q.png", probe_img, "image/png")}
                    data = {"k": "3"} if route == "/search" else None
                    r = http.post(route, files=files, data=data)
                    if r.status_code != 200:
                        errors.append((route, r.status_code, r.text[:200]))
                    else:
                        results.append((time.monotonic(), route, r.json()))
                except Exception as exc:  # a dropped connection is a failed request too
                    errors.append((route, "exception", repr(exc)))

    try:
        new = _write_pngs(tmp_path / "incoming2", fmnist_test.images[2000:2040])
        code = byol(["retrain", "--new-data", str(new), "--steps", "8", *sum((["--set", o] for o in TINY), [])])
        assert code == 0
        new_version = json.loads(paths.release_file().read_text())["current"]
        assert new_version != old
        report = json.loads((paths.reports_dir() / f"{new_version}.json").read_text())
        assert report["gate"] == "label-free" and report["accepted"]  # no --eval-data: the user's images, no labels
        assert report["sample_from"] == "40 new + 1000 earlier images" and report["n_images"] == 1000  # seeded pick
        assert httpx.get(server.url + "/info", timeout=10).json()["version"] == old  # promoted, not yet loaded
        # clients hammer the server while it loads the new encoder + index and swaps (what --url does)
        threads = [threading.Thread(target=loop, args=(r,)) for r in ("/embed", "/search")]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert byol(["promote", new_version, "--url", server.url, "--token", TOKEN]) == 0
        swapped_at = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:5]
        versions = {body["version"] for _, _, body in results}
        assert versions <= {old, new_version} and new_version in versions
        after = [body for t, _, body in results if t > swapped_at + 0.5]
        assert after and all(b["version"] == new_version for b in after)
        # after the swap, /embed answers exactly what the new bundle's OnnxEncoder computes
        enc = OnnxEncoder(bundle_path(new_version))
        r = httpx.post(server.url + "/embed", files={"image": ("q.png", probe_img, "image/png")}, timeout=30)
        np.testing.assert_allclose(r.json()["embedding"], enc.embed(load(probe_img, enc.input_size)[None])[0],
                                   atol=1e-5)
        manifest = enc.manifest
        assert manifest.parent_version == old and manifest.data_fingerprint
        assert (paths.reports_dir() / f"{new_version}.json").is_file()
        # rollback is one command, and the server follows
        assert byol(["rollback", "--url", server.url, "--token", TOKEN]) == 0
        info = httpx.get(server.url + "/info", timeout=10).json()
        assert info["version"] == old
    finally:
        stop.set()
        server.stop()


def test_rejected_candidate_stays_unpromoted(deployment, tmp_path, fmnist_test):
    served = json.loads(paths.release_file().read_text())["current"]
    new = _write_pngs(tmp_path / "incoming3", fmnist_test.images[3000:3020])
    # an impossible bar (the candidate must beat the current by 100 points) forces a rejection
    code = byol(["retrain", "--new-data", str(new), "--steps", "4", "--tolerance", "-1.0", *EVAL,
                 *sum((["--set", o] for o in TINY), [])])
    assert code == 0
    assert json.loads(paths.release_file().read_text())["current"] == served
    from serving.store import list_bundles

    assert len(list_bundles()) >= 2


def test_a_candidate_whose_training_diverges_is_rejected_and_its_images_stay_new(deployment, tmp_path, fmnist_test,
                                                                                   capsys):
    from clients.workflows.retrain import load_seen
    from serving.store import list_bundles

    served, before = json.loads(paths.release_file().read_text())["current"], len(list_bundles())
    new = _write_pngs(tmp_path / "incoming-nan", fmnist_test.images[3100:3120])
    code = byol(["retrain", "--new-data", str(new), "--steps", "4", *EVAL,
                 *sum((["--set", o] for o in [*TINY, "optim.lr_base=1e38", "optim.trust=1e30"]), [])])
    out = capsys.readouterr().out
    assert code == 1 and "failed, nothing was registered" in out and "diverged at step" in out
    assert json.loads(paths.release_file().read_text())["current"] == served and len(list_bundles()) == before
    digest = hashlib.sha256((new / "new_000.png").read_bytes()).hexdigest()
    assert digest not in load_seen()  # a retry with other settings still sees them as new


def test_kill_9_at_each_late_stage_then_the_rerun_promotes_the_same_candidate(deployment, tmp_path, fmnist_test):
    """The process dies right after the gate report is written (exported, not registered), then — run again — right
    after the new index is published (not promoted); the third run picks up there and promotes the version exported
    by the first (no second export, no second index build)."""
    from serving.contract.bundle import read_bundle
    from tests.index.faults import KILL_RUNNER

    served = json.loads(paths.release_file().read_text())["current"]
    new = _write_pngs(tmp_path / "incoming4", fmnist_test.images[4000:4030])
    args = ["retrain", "--new-data", str(new), "--steps", "4", *sum((["--set", o] for o in TINY), [])]
    version = None
    for point, match in [("replace", r"/runs/[^/]+/bundle/gate_report\.json$"),  # gated, not registered
                         ("rename", r"/indexes/\d{8}-\d{6}-[0-9a-f]{8}$")]:  # index published, not promoted
        proc = subprocess.run([sys.executable, "-c", KILL_RUNNER, point, match, "1", "-m", "clients.cli", *args],
                              cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert json.loads(paths.release_file().read_text())["current"] == served  # killed before the promotion
        if version is None:
            run = max(paths.retrain_dir().glob("runs/*/"), key=lambda d: d.stat().st_mtime)
            version = read_bundle(run / "bundle")[1].version
    assert byol(args) == 0
    assert json.loads(paths.release_file().read_text())["current"] == version
