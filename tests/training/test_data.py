import numpy as np
import pytest
import torch

from serving.contract.sources import ImageSet, SourceError
from training.data import Batcher


def _set(n=50):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    return ImageSet(images, np.arange(n) % 3)


def test_batcher_covers_an_epoch_without_repeats():
    b = Batcher(_set().images, 10, seed=0, device=torch.device("cpu"))
    seen = torch.cat([b.next()[:, 0, 0, 0] for _ in range(5)])
    assert sorted(seen.tolist()) == list(range(50))
    assert b.next().dtype == torch.uint8 and b.state.epoch == 1


def test_batcher_resumes_with_the_same_batches():
    a = Batcher(_set().images, 8, seed=3, device=torch.device("cpu"))
    for _ in range(4):
        a.next()
    b = Batcher(_set().images, 8, seed=3, device=torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    for _ in range(6):
        assert torch.equal(a.next(), b.next())


def test_ranks_split_the_global_batch():
    images = _set().images
    whole = Batcher(images, 10, seed=0, device=torch.device("cpu")).next()
    parts = [Batcher(images, 10, seed=0, device=torch.device("cpu"), rank=r, world_size=2).next() for r in (0, 1)]
    assert torch.equal(torch.cat(parts), whole)


def test_too_few_images_for_a_batch():
    with pytest.raises(SourceError, match="only 50 training images"):
        Batcher(_set().images, 64, seed=0, device=torch.device("cpu"))
