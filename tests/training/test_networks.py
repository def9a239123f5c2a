"""The encoder's pooled output: the paper's global average, or a 2×2 grid / several stages for small images — each
exported to ONNX with the same dimension and the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.contract.encoder import OnnxEncoder
from tests.conftest import sample_images
from training.export import export_bundle
from training.networks import EncoderConfig, build_encoder


def _encoder(pool: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(arch="resnet10", stem="small-s2", width=8, input_size=28, pool=pool)).eval()


@pytest.mark.parametrize("pool,dim", [("avg", 64), ("grid2", 256), ("grid4", 1024), ("grid2+s3", 256 + 16 * 32),
                                      ("multi", 64 + 32 + 16)])
def test_out_dim_is_what_forward_returns(pool, dim):
    enc = _encoder(pool)
    assert enc.out_dim == dim and enc(torch.rand(3, 3, 28, 28)).shape == (3, dim)


def test_the_grid_averaged_over_its_cells_is_the_global_average():
    """'grid2' adds where features fired to what 'avg' returns, and loses nothing of it (same trunk, same seed)."""
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        cells = _encoder("grid2")(x).view(2, -1, 2, 2)
        assert torch.allclose(cells.mean((2, 3)), _encoder("avg")(x), atol=1e-5)


def test_an_unknown_pool_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"avg, grid2, grid4, grid2\+s3, multi"):
        EncoderConfig(pool="max")


@pytest.mark.parametrize("pool", ["grid2", "grid4", "grid2+s3", "multi"])
def test_pooled_variants_export_with_parity(pool, tmp_path):
    enc = _encoder(pool)
    export_bundle(enc, tmp_path / "b", parity_images=sample_images(8))  # raises when ONNX and PyTorch disagree
    onnx = OnnxEncoder(tmp_path / "b", intra_op_threads=1)
    x = onnx.embed(np.stack(sample_images(4)))
    assert onnx.dim == enc.out_dim and x.shape == (4, enc.out_dim)


def _image_norm_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(arch="resnet10", stem="small-s2", width=8, input_size=28, pool="grid2",
                                       input_norm="image")).eval()


def test_image_normalisation_ignores_a_colour_cast_and_exposure_the_dataset_one_does_not():
    """'image' centres each channel on the image's own mean and divides by its RMS contrast (+ a small floor): a
    per-channel offset changes nothing; an exposure (×0.7) only through the floor."""
    x = torch.rand(2, 3, 28, 28) * 0.6 + 0.2
    cast = x + torch.tensor([0.1, -0.05, 0.15]).view(1, 3, 1, 1)
    with torch.no_grad():
        enc, plain = _image_norm_encoder(), _encoder("grid2")
        assert torch.allclose(enc(cast), enc(x), atol=1e-5)
        assert not torch.allclose(plain(cast), plain(x), atol=1e-3)
        scaled = enc(x * 0.7)
        assert (scaled - enc(x)).abs().max() < 0.2 * (plain(x * 0.7) - plain(x)).abs().max()


def test_an_unknown_input_norm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="dataset, image"):
        EncoderConfig(input_norm="batch")


def test_image_normalisation_exports_with_parity(tmp_path):
    enc = _image_norm_encoder()
    export_bundle(enc, tmp_path / "b", parity_images=sample_images(8))  # raises when ONNX and PyTorch disagree
    x = OnnxEncoder(tmp_path / "b", intra_op_threads=1).embed(np.stack(sample_images(4)))
    assert x.shape == (4, enc.out_dim)
