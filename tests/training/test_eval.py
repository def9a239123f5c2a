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
