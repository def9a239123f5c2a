"""PyTorch encoders as embedders: unit vectors, size checks, an untrained twin that leaves the RNG alone."""

import numpy as np
import pytest
import torch

from tests.conftest import sample_images, tiny_encoder
from training.eval import embed_images, random_init_like


def test_embed_images_returns_unit_vectors():
    enc = tiny_encoder()
    emb = embed_images(enc, sample_images(8), batch_size=3)
    assert emb.shape == (8, enc.out_dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embed_images_rejects_wrong_size():
    with pytest.raises(ValueError, match="expects 28"):
        embed_images(tiny_encoder(), np.zeros((2, 32, 32, 3), np.uint8))


def test_random_init_keeps_the_callers_rng():
    enc = tiny_encoder()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    random_init_like(enc)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_init_baseline_gets_its_batchnorm_statistics_from_the_images():
    """Untrained BN keeps the init's running stats (mean 0, var 1); calibrated, they describe real activations."""
    enc = tiny_encoder()
    plain = random_init_like(enc)
    calibrated = random_init_like(enc, calibrate_on=sample_images(64))
    bn = lambda m: next(b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))  # noqa: E731
    assert torch.all(bn(plain).running_mean == 0) and not torch.allclose(bn(calibrated).running_mean,
                                                                         torch.zeros_like(bn(plain).running_mean))
    weights = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(weights(plain), weights(calibrated), strict=True))
    assert not calibrated.training
