"""A user's own folder, end to end, all for real: a generated folder of ~2,000 64-px images (nested folders, PNG and
JPEG, a few broken files) → ``byol train --data DIR --minutes 1`` (shrunk with ``--set``) → ``byol export`` →
``byol embed-folder`` → ``byol index build --from-embeddings`` → a real BentoML server → ``/search`` with one of the
folder's images finds that very file first, and no answer holds a path of the server's disk. Then ``byol retrain`` on
new images of the same kind, gated without labels on the user's own images, rebuilds the index from the collection
(every ``folder:`` URI read back) and promotes."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from clients.cli import main as byol
from tests.serving import server as srv

pytestmark = pytest.mark.slow

N_IMAGES = 2000
BROKEN = ("a/broken.png", "b/x/truncated.jpg", "c/empty.png")
TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=32", "train.steps=20", "train.calibrate_steps=4", "train.checkpoint_every=0",
        "train.knn_every=0", "train.progress=false", "train.device=cpu"]


def make_folder(root, n: int = N_IMAGES, seed: int = 0, broken: bool = True):
    """``n`` distinct 64-px pictures (random shapes on random gradients) in three levels of folders, one in three a
    JPEG; plus broken files that every stage must skip."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 64)[None, :, None]
    files = []
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        grad = (c0 * (1 - ramp) + c1 * ramp).repeat(64, 0)  # left → right
        img = Image.fromarray((grad if i % 2 else grad.transpose(1, 0, 2)).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, 48, 2)
            w, h = rng.integers(6, 32, 2)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        sub = root / "abc"[i % 3] / f"{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:04d}.{'jpg' if i % 3 == 0 else 'png'}"
        img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)
        files.append(path)
    if not broken:
        return files
    for rel in BROKEN:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / BROKEN[0]).write_bytes(b"not an image at all")
    (root / BROKEN[1]).write_bytes(files[0].read_bytes()[:200])  # a JPEG cut short
    (root / BROKEN[2]).write_bytes(b"")
    return files


def test_a_folder_trains_exports_embeds_indexes_and_serves_its_own_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BYOL_HOME", str(tmp_path / "home"))  # its own collection, indexes and release pointer
    folder = tmp_path / "my photos"
    files = make_folder(folder)
    run, out = tmp_path / "run", tmp_path / "embeddings"

    overrides = sum((["--set", o] for o in TINY), [])
    assert byol(["train", "--data", str(folder), "--minutes", "1", "--out", str(run), *overrides]) == 0
    assert "folder preset folder-64" in capsys.readouterr().out
    assert byol(["export", "--encoder", str(run / "encoder.pt"), "--parity-data", str(folder)]) == 0
    version = next(line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("version"))
    assert byol(["embed-folder", str(folder), "--out", str(out), "--model", version, "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == N_IMAGES and sorted(manifest["skipped"]) == sorted(BROKEN)
    assert byol(["index", "build", "--from-embeddings", str(out), "--model", version]) == 0

    server = srv.start({"BYOL_MODEL_TAG": version})
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for query in (files[3], files[1000], files[-1]):  # a JPEG, a PNG, the last one; three folders deep
                r = http.post("/search", files={"image": (query.name, query.read_bytes(), "image/png")},
                              data={"k": "5"})
                assert r.status_code == 200, r.text
                body = r.json()
                rel = query.relative_to(folder).as_posix()
                top = body["results"][0]["metadata"]
                assert body["version"] == version and top["path"] == rel, (rel, body["results"][:2])
                assert top["uri"] == f"folder:{folder.name}/{rel}"
                assert str(tmp_path) not in r.text  # no server path anywhere in the answer
                assert not any(str(v).startswith("/") for hit in body["results"] for v in hit["metadata"].values())
    finally:
        server.stop()

    retrain_on_new_images_of_the_same_kind(tmp_path, folder, version, capsys)


def retrain_on_new_images_of_the_same_kind(tmp_path, folder, parent: str, capsys) -> None:
    from index.durable import DurableIndex
    from serving import paths

    make_folder(tmp_path / "incoming", n=30, seed=1, broken=False)
    assert byol(["retrain", "--new-data", str(tmp_path / "incoming"), "--from", parent, "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "label-free gate on" in printed and "thresholds:" in printed and "promoted" in printed, printed
    new = json.loads(paths.release_file().read_text())["current"]
    report = json.loads((paths.reports_dir() / f"{new}.json").read_text())
    assert report["gate"] == "label-free" and report["sample_from"] == "30 new + 1000 earlier images"
    index = DurableIndex.open(paths.index_dir(new), read_only=True)  # rebuilt from the collection's folder: URIs
    uris = sorted(m["uri"] for _, m in index.items())
    assert len(uris) == N_IMAGES and all(u.startswith(f"folder:{folder.name}/") for u in uris)
