"""GPU-only invariants (skipped without CUDA; ``bench/gpu.sh`` runs them on a GPU box).

A training step must never wait for the device (``torch.cuda.set_sync_debug_mode("error")`` turns any host sync
into an error), and the data of a small set lives on the device.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=64", "train.device=cuda"]


def _state():
    import numpy as np

    from serving.contract.sources import ImageSet
    from training.config import apply_overrides, preset
    from training.distributed import DistInfo
    from training.state import build_state

    cfg = apply_overrides(preset("fmnist-gpu"), TINY)
    images = np.random.default_rng(0).integers(0, 256, (512, 28, 28, 3), dtype=np.uint8)
    return build_state(cfg, ImageSet(images), torch.device("cuda"), DistInfo())


def test_a_small_data_set_lives_on_the_device():
    assert _state().batcher.images.is_cuda


def test_a_training_step_never_synchronises_with_the_host():
    from training.byol import train_step

    state = _state()
    batches = [state.batcher.next() for _ in range(3)]
    train_step(state.online, state.target, state.optimizer, state.augment, batches[0], state.generator, 0.1, 0.99,
               amp=True, channels_last=True)  # warm-up: first-call allocations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images in batches[1:]:
            train_step(state.online, state.target, state.optimizer, state.augment, images, state.generator, 0.1,
                       0.99, amp=True, channels_last=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
