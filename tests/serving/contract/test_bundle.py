"""A damaged bundle is refused with a BundleError that names what is wrong, never a stack trace from ORT."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from serving.contract.bundle import FORMAT_VERSION, MANIFEST_FILE, BundleError, Manifest, read_bundle, write_bundle
from serving.contract.encoder import OnnxEncoder


@pytest.fixture
def copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / MANIFEST_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _replace_onnx(bundle: Path, data: bytes) -> None:
    """New ONNX bytes with a matching hash, so only the content itself is wrong."""
    (bundle / "encoder.onnx").write_bytes(data)
    _edit_manifest(bundle, onnx_sha256=hashlib.sha256(data).hexdigest())


def test_round_trip_keeps_every_field(tmp_path):
    m = Manifest(version="v1", embedding_dim=8, input_size=28, architecture={"arch": "resnet10"}, onnx_sha256="",
                 parent_version="v0", metrics={"knn": 0.8}, parity={"fp32": {"max_abs_diff": 0.0}})
    write_bundle(tmp_path, b"onnx-bytes", m)
    assert read_bundle(tmp_path)[1] == m


def test_missing_manifest(copy):
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        OnnxEncoder(copy)


def test_manifest_not_json(copy):
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid"):
        read_bundle(copy)


def test_manifest_without_required_field(copy):
    obj = json.loads((copy / MANIFEST_FILE).read_text())
    del obj["embedding_dim"]
    (copy / MANIFEST_FILE).write_text(json.dumps(obj))
    with pytest.raises(BundleError, match="lacks required field.*embedding_dim"):
        read_bundle(copy)


def test_newer_format_is_refused(copy):
    _edit_manifest(copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="newer than this byol-embed reads"):
        read_bundle(copy)


def test_missing_onnx(copy):
    (copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="encoder.onnx is missing"):
        read_bundle(copy)


def test_hash_mismatch(copy):
    data = bytearray((copy / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its manifest hash"):
        OnnxEncoder(copy)


def test_corrupt_onnx(copy):
    _replace_onnx(copy, b"\x08\x07garbage that is no protobuf model")
    with pytest.raises(BundleError, match="cannot load encoder.onnx"):
        OnnxEncoder(copy)


def test_wrong_embedding_dim(copy):
    dim = read_bundle(copy)[1].embedding_dim
    _edit_manifest(copy, embedding_dim=dim + 1)
    with pytest.raises(BundleError, match=f"output dim {dim} != manifest embedding_dim {dim + 1}"):
        OnnxEncoder(copy)


def test_wrong_input_size(copy):
    _edit_manifest(copy, input_size=32)
    with pytest.raises(BundleError, match="input size 28 != manifest input_size 32"):
        OnnxEncoder(copy)


def test_non_positive_dim(copy):
    _edit_manifest(copy, embedding_dim=0)
    with pytest.raises(BundleError, match="bad embedding_dim"):
        read_bundle(copy)


def test_extra_graph_hash_is_checked(copy):
    (copy / "encoder_fp16.onnx").write_bytes(b"half")
    _edit_manifest(copy, extra_files={"encoder_fp16.onnx": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(BundleError, match="encoder_fp16.onnx does not match its manifest hash"):
        read_bundle(copy)


def test_listed_extra_graph_must_exist(copy):
    _edit_manifest(copy, extra_files={"encoder_fp16.onnx": hashlib.sha256(b"half").hexdigest()})
    with pytest.raises(BundleError, match="encoder_fp16.onnx is missing"):
        read_bundle(copy)
