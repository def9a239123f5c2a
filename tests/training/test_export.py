"""Export: the ONNX bundle computes what PyTorch computes, from the bytes serving receives, or export fails."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.contract import image as image_contract
from serving.contract.bundle import read_bundle
from serving.contract.encoder import OnnxEncoder
from tests.conftest import REPO, sample_images, tiny_encoder
from training.export import FP16_FILE, ExportError, ServingGraph, export_bundle
from training.networks import Encoder, EncoderConfig, build_encoder

ATOL, MIN_COSINE = 1e-4, 0.9999


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _torch_embed(encoder: Encoder, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return ServingGraph(encoder.eval())(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def fmnist_batch(fmnist_test) -> np.ndarray:
    """Fashion-MNIST test images the tiny bundle never saw in its own parity check, through the serving path."""
    return image_contract.load_batch([_png(im) for im in fmnist_test.images[500:532]], 28)


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> tuple[Path, Encoder, bool]:
    """tiny_encoder(0)'s weights with other mean/std, exported (from training mode) with meta, a parent and an
    fp16 twin; also says whether the encoder was still in training mode afterwards."""
    base = tiny_encoder(0)
    cfg = EncoderConfig(**{**base.cfg.to_dict(), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
    enc = build_encoder(cfg)
    enc.load_state_dict(base.state_dict())
    out = tmp_path_factory.mktemp("variant") / "bundle"
    meta = {"config": {"preset": "test"}, "data_fingerprint": "fmnist-abc", "metrics": {"knn_top1": 0.5}}
    export_bundle(enc.train(), out, meta=meta, parity_images=sample_images(8), parent_version="20260101-000000-aa",
                  fp16=True)
    return out, enc, enc.training


def test_parity_on_fashion_mnist_within_bounds(tiny_bundle, fmnist_batch):
    onnx_vecs = OnnxEncoder(tiny_bundle, intra_op_threads=1).embed(fmnist_batch)
    torch_vecs = _torch_embed(tiny_encoder(0), fmnist_batch)
    cos = (onnx_vecs * torch_vecs).sum(1) / np.linalg.norm(onnx_vecs, axis=1) / np.linalg.norm(torch_vecs, axis=1)
    assert np.abs(onnx_vecs - torch_vecs).max() <= ATOL and cos.min() >= MIN_COSINE


def test_manifest_records_parity_figures(tiny_bundle):
    parity = read_bundle(tiny_bundle)[1].parity["fp32"]
    assert parity["n_images"] == 16 and parity["max_abs_diff"] <= ATOL and parity["min_cosine"] >= MIN_COSINE


def test_onnx_input_is_uint8_nhwc_and_output_float32_nd(tiny_bundle):
    import onnx

    model = onnx.load(str(tiny_bundle / "encoder.onnx"))
    (inp,), (out,) = model.graph.input, model.graph.output
    in_dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
    assert (inp.type.tensor_type.elem_type, in_dims[1:], out.type.tensor_type.elem_type, out_dims[1:]) == (
        onnx.TensorProto.UINT8, [28, 28, 3], onnx.TensorProto.FLOAT, [tiny_encoder().out_dim])


def test_batch_dimension_is_dynamic(tiny_bundle, fmnist_batch):
    enc = OnnxEncoder(tiny_bundle, intra_op_threads=1)
    whole = enc.embed(fmnist_batch)
    parts = np.concatenate([enc.embed(fmnist_batch[:1]), enc.embed(fmnist_batch[1:4]), enc.embed(fmnist_batch[4:])])
    assert np.abs(whole - parts).max() <= 1e-6


def test_normalisation_constants_live_in_the_graph(tiny_bundle, variant, fmnist_batch):
    # same weights, other mean/std: only the bundle knows, and the vectors differ accordingly
    a = OnnxEncoder(tiny_bundle, intra_op_threads=1).embed(fmnist_batch)
    b = OnnxEncoder(variant[0], intra_op_threads=1).embed(fmnist_batch)
    assert np.abs(a - b).max() > 1e-2 and np.abs(b - _torch_embed(variant[1], fmnist_batch)).max() <= ATOL


def test_no_normalisation_constant_in_serving_code():
    constants = re.compile(r"0\.(485|456|406|229|224|225|286|353)\d*")  # ImageNet / Fashion-MNIST mean, std
    hits = [f"{p.name}:{m.group(0)}" for p in sorted((REPO / "serving").glob("*.py")) for m in
            constants.finditer(p.read_text())]
    assert hits == []


def test_manifest_records_meta_and_parent(variant):
    m = read_bundle(variant[0])[1]
    assert (m.training_config, m.data_fingerprint, m.metrics, m.parent_version, m.opset >= 17) == (
        {"preset": "test"}, "fmnist-abc", {"knn_top1": 0.5}, "20260101-000000-aa", True)


def test_fp16_graph_within_its_bound(variant, fmnist_batch):
    bundle, enc, _ = variant
    fp16 = OnnxEncoder(bundle, intra_op_threads=1, onnx_file=FP16_FILE).embed(fmnist_batch)
    recorded = read_bundle(bundle)[1].parity["fp16"]
    assert np.abs(fp16 - _torch_embed(enc, fmnist_batch)).max() <= recorded["atol"] and recorded["file"] == FP16_FILE


class _TamperedEncoder(Encoder):
    """Computes something else while being exported: the ONNX graph then disagrees with eager PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return z + 0.05 if torch.compiler.is_exporting() else z


def _tampered() -> Encoder:
    base = tiny_encoder(0)
    enc = _TamperedEncoder(base.cfg)
    enc.load_state_dict(base.state_dict())
    return enc.eval()


@pytest.fixture(scope="module")
def tampered_export(tmp_path_factory) -> tuple[ExportError | None, Path]:
    """One export of the tampered encoder: the error it raised and the folder it was asked to create."""
    parent = tmp_path_factory.mktemp("tampered")
    try:
        export_bundle(_tampered(), parent / "bundle", parity_images=sample_images(4))
    except ExportError as exc:
        return exc, parent
    return None, parent


def test_graph_that_differs_from_pytorch_fails_loudly(tampered_export):
    error, _ = tampered_export
    assert re.search(r"parity failed: max \|ONNX - PyTorch\| = .* min cosine", str(error or ""))


def test_failed_export_leaves_no_directory(tampered_export):
    error, parent = tampered_export
    assert error is not None and list(parent.iterdir()) == []


def test_existing_output_directory_is_refused(tmp_path):
    (tmp_path / "bundle").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_encoder(), tmp_path / "bundle")


@pytest.mark.parametrize("images", [np.zeros((2, 28, 28, 3), np.float32), np.zeros((2, 28), np.uint8)])
def test_unusable_parity_images_are_refused(tmp_path, images):
    with pytest.raises(ExportError, match="parity_images must be uint8"):
        export_bundle(tiny_encoder(), tmp_path / "bundle", parity_images=images)


def test_unreadable_parity_file_is_refused(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ExportError, match="parity image unusable: image #0: not an image"):
        export_bundle(tiny_encoder(), tmp_path / "bundle", parity_files=[tmp_path / "junk.png"])


def test_export_restores_the_encoders_training_mode(variant):
    assert variant[2] is True


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    """tiny_encoder(0) exported with its int8 twin, calibrated on 16 Fashion-MNIST-like sample images."""
    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_bundle(tiny_encoder(0), out, parity_images=sample_images(16), int8=True)
    return out


def test_int8_graph_is_listed_and_within_its_recorded_bound(int8_bundle, fmnist_batch):
    from serving.contract.bundle import sha256_file
    from training.export import INT8_ATOL, INT8_FILE

    manifest = read_bundle(int8_bundle)[1]
    recorded = manifest.parity["int8"]
    assert manifest.extra_files == {INT8_FILE: sha256_file(int8_bundle / INT8_FILE)} and recorded["file"] == INT8_FILE
    int8 = OnnxEncoder(int8_bundle, intra_op_threads=1, onnx_file=INT8_FILE).embed(fmnist_batch)
    torch_vecs = _torch_embed(tiny_encoder(0), fmnist_batch)
    assert recorded["atol"] == INT8_ATOL and np.abs(int8 - torch_vecs).max() <= INT8_ATOL


def test_int8_graph_is_really_quantised_and_the_fp32_graph_unchanged(int8_bundle, tiny_bundle, fmnist_batch):
    import onnx

    from training.export import INT8_FILE

    ops = {n.op_type for n in onnx.load(str(int8_bundle / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    same = OnnxEncoder(int8_bundle, intra_op_threads=1).embed(fmnist_batch)
    np.testing.assert_array_equal(same, OnnxEncoder(tiny_bundle, intra_op_threads=1).embed(fmnist_batch))
