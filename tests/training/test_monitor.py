"""KnnMonitor: disabled without labels, seeded capped subsets, the shared kNN metric, and the recorded curve."""

import numpy as np
import torch
from torch import nn

from serving.contract.sources import ImageSet
from training.monitor import KnnMonitor


class Brightness(nn.Module):
    """An 'encoder' whose 2-d embedding points one way for dark images and another for bright ones."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([b, 1.0 - b], dim=1)


def _set(n: int, seed: int, labels: bool = True) -> ImageSet:
    """Class 0 dark, class 1 bright (alternating), so a brightness embedding separates them perfectly."""
    y = np.arange(n) % 2
    rng = np.random.default_rng(seed)
    images = np.where(y[:, None, None, None] == 1, rng.integers(200, 256, (n, 8, 8, 3)),
                      rng.integers(0, 56, (n, 8, 8, 3))).astype(np.uint8)
    return ImageSet(images, y if labels else None)


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars.append((name, value, step))


def test_disabled_without_labelled_holdout_and_references():
    assert not KnnMonitor(_set(20, 0), None, 10, 10, 5, 0).enabled
    assert not KnnMonitor(_set(20, 0), _set(10, 1, labels=False), 10, 10, 5, 0).enabled
    assert not KnnMonitor(_set(20, 0, labels=False), _set(10, 1), 10, 10, 5, 0).enabled
    assert KnnMonitor(_set(20, 0, labels=False), _set(10, 1), 10, 10, 5, 0)(Brightness()) is None


def test_subsets_are_capped_and_seeded():
    a, b = KnnMonitor(_set(50, 0), _set(30, 1), 12, 7, 5, seed=3), KnnMonitor(_set(50, 0), _set(30, 1), 12, 7, 5, 3)
    c = KnnMonitor(_set(50, 0), _set(30, 1), 12, 7, 5, seed=4)
    assert (len(a.ref), len(a.holdout)) == (12, 7)
    assert np.array_equal(a.ref.images, b.ref.images) and np.array_equal(a.holdout.images, b.holdout.images)
    assert not np.array_equal(a.ref.images, c.ref.images)


def test_scores_a_separating_encoder_perfectly_and_leaves_its_mode_alone():
    encoder = Brightness().train()
    assert KnnMonitor(_set(40, 0), _set(20, 1), 40, 20, 5, 0)(encoder) == 1.0
    assert encoder.training
    holdout = _set(20, 1)
    flipped = ImageSet(holdout.images, 1 - holdout.labels)
    assert KnnMonitor(_set(40, 0), flipped, 40, 20, 5, 0)(encoder) == 0.0


def test_records_the_curve_every_n_steps_and_writes_the_scalar():
    writer, history = FakeWriter(), {}
    monitor = KnnMonitor(_set(40, 0), _set(20, 1), 40, 20, 5, 0, every=3, writer=writer)
    for step in range(1, 8):
        monitor.at_step(step, Brightness(), history, loss=float(step))
    assert history == {"3": {"knn": 1.0, "loss": 3.0}, "6": {"knn": 1.0, "loss": 6.0}}
    assert writer.scalars == [("monitor/knn_accuracy", 1.0, 3), ("monitor/knn_accuracy", 1.0, 6)]
    KnnMonitor(_set(40, 0), _set(20, 1), 40, 20, 5, 0, every=0).at_step(6, Brightness(), history, 0.0)
    assert set(history) == {"3", "6"}


def _flat(values, labels) -> ImageSet:
    return ImageSet(np.stack([np.full((8, 8, 3), v, np.uint8) for v in values]), np.asarray(labels))


def test_votes_among_k_neighbours_not_just_the_nearest():
    # The query's nearest reference (same brightness) is a mislabelled outlier; its 4 next neighbours outvote it.
    refs = _flat([30, 10, 12, 14, 16, 240, 245], [1, 0, 0, 0, 0, 1, 1])
    query = _flat([30], [0])
    assert KnnMonitor(refs, query, 7, 1, k=5, seed=0)(Brightness()) == 1.0
    assert KnnMonitor(refs, query, 7, 1, k=1, seed=0)(Brightness()) == 0.0
