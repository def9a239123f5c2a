"""OnnxEncoder: the torch-free door to a bundle (uint8 NHWC in, unit-norm float32 out, CUDA when present)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.contract.bundle import BundleError, read_bundle
from serving.contract.encoder import OnnxEncoder, pick_providers
from tests.conftest import sample_images


@pytest.fixture(scope="module")
def encoder(tiny_bundle) -> OnnxEncoder:
    return OnnxEncoder(tiny_bundle, intra_op_threads=1)


def test_output_is_float32_n_by_dim(encoder):
    out = encoder.embed(sample_images(5))
    assert (out.dtype, out.shape) == (np.float32, (5, encoder.dim))


def test_output_has_unit_norm(encoder):
    assert np.allclose(np.linalg.norm(encoder.embed(sample_images(5)), axis=1), 1.0, atol=1e-5)


def test_properties_come_from_manifest(encoder, tiny_bundle):
    m = read_bundle(tiny_bundle)[1]
    assert (encoder.version, encoder.dim, encoder.input_size) == (m.version, m.embedding_dim, m.input_size)


def test_empty_batch(encoder):
    assert encoder.embed(np.zeros((0, 28, 28, 3), np.uint8)).shape == (0, encoder.dim)


@pytest.mark.parametrize("bad", [np.zeros((2, 28, 28, 3), np.float32), np.zeros((2, 32, 32, 3), np.uint8),
                                 np.zeros((28, 28, 3), np.uint8), np.zeros((2, 28, 28, 1), np.uint8)])
def test_wrong_input_names_the_expected_shape(encoder, bad):
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 28, 28, 3\]"):
        encoder.embed(bad)


def test_caller_array_is_untouched(encoder):
    images = sample_images(3)
    before = images.copy()
    encoder.embed(images)
    assert np.array_equal(images, before)


def test_cpu_is_always_the_last_resort():
    assert pick_providers()[-1] == "CPUExecutionProvider"


def test_cuda_first_when_available():
    import onnxruntime as ort

    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else \
        "CPUExecutionProvider"
    assert pick_providers()[0] == expected


def test_session_runs_on_a_chosen_provider(encoder):
    assert encoder.providers[0] == pick_providers()[0]


def test_missing_alternate_graph(tiny_bundle):
    with pytest.raises(BundleError, match="encoder_fp16.onnx is missing"):
        OnnxEncoder(tiny_bundle, onnx_file="encoder_fp16.onnx")
