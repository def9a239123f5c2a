"""``byol embed-folder``: vectors and metadata of a folder in the autofaiss / clip-retrieval layout, resumable."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from clients.cli import main as byol
from clients.workflows import embedding
from clients.workflows.embedding import EmbedFolderConfig, embed_folder, read_embeddings


def make_folder(root, n=23):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(
            sub / f"{i:03d}.{'png' if i % 3 else 'jpg'}")
    (root / "a" / "broken.png").write_bytes(b"not an image")
    return root


def test_outputs_line_up_with_the_files_and_the_encoder(registered_bundle, tmp_path, capsys):
    from serving.contract.encoder import OnnxEncoder
    from serving.contract.image import load
    from serving.store import bundle_path

    folder = make_folder(tmp_path / "photos")
    assert byol(["embed-folder", str(folder), "--out", str(tmp_path / "out"), "--model", registered_bundle,
                 "--chunk", "5", "--quiet"]) == 0
    assert "embedded 23 images" in capsys.readouterr().out
    vectors, rows, manifest = read_embeddings(tmp_path / "out")
    enc = OnnxEncoder(bundle_path(registered_bundle))
    assert vectors.shape == (23, enc.dim) and [r["id"] for r in rows] == list(range(23))
    assert manifest["encoder_version"] == enc.version and manifest["skipped"] == ["a/broken.png"]
    first = folder / rows[0]["path"]
    assert not rows[0]["path"].startswith("/") and rows[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert (rows[0]["width"], rows[0]["height"]) == Image.open(first).size
    np.testing.assert_allclose(vectors[0], enc.embed(load(first.read_bytes(), enc.input_size)[None])[0], atol=1e-5)


def test_an_interrupted_run_resumes_without_embedding_finished_chunks(registered_bundle, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "photos")
    cfg = EmbedFolderConfig(folder=folder, out=tmp_path / "out", model=registered_bundle, chunk=4, progress=False)
    calls, real = [], embedding._chunk

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(embedding, "_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        embed_folder(cfg)
    assert not (tmp_path / "out" / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(embedding, "_chunk", lambda *a: (calls.append(1), real(*a))[1])
    assert embed_folder(cfg)["count"] == 23 and len(calls) == 6 - 2  # 24 files in chunks of 4; 2 were done


def test_a_finished_output_is_not_overwritten(registered_bundle, tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", n=3)
    args = ["embed-folder", str(folder), "--out", str(tmp_path / "out"), "--model", registered_bundle, "--quiet"]
    assert byol(args) == 0
    assert byol(args) != 0 and "already holds embeddings" in capsys.readouterr().err


def test_an_empty_folder_is_one_clear_line(registered_bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert byol(["embed-folder", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image files" in err[0]
