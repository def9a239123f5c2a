"""GPU-only invariants (skipped without CUDA; ``bench/gpu.sh`` runs them first on a GPU box, in well under a minute).

A training step must never wait for the device (``torch.cuda.set_sync_debug_mode("error")`` turns any host sync
into an error: one per step would stall the GPU every step), whatever precision and layout ``auto`` picks; the data
of a small set and the views made from it live on the device; ``auto`` measures its candidates on the GPU; and a
tiny run goes through the whole loop there (monitor, checkpoint, encoder file) before the 5-minute run relies on it.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=64", "train.device=cuda"]


def _cfg(extra: tuple[str, ...] = ()):
    from training.config import apply_overrides, preset

    return apply_overrides(preset("fmnist-gpu"), [*TINY, *extra])


def _images(n: int = 512):
    import numpy as np

    from serving.contract.sources import ImageSet

    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8), rng.integers(0, 10, n))


def _state():
    from training.distributed import DistInfo
    from training.state import build_state

    return build_state(_cfg(), _images(), torch.device("cuda"), DistInfo())


def test_a_small_data_set_lives_on_the_device():
    assert _state().batcher.images.is_cuda


def test_the_views_are_made_on_the_device():
    state = _state()
    v1, v2 = state.augment(state.batcher.next(), generator=state.generator)
    assert v1.is_cuda and v2.is_cuda
    assert v1.dtype == v2.dtype == torch.float32 and v1.shape == v2.shape == (64, 3, 28, 28)


@pytest.mark.parametrize(("amp", "channels_last"), [(True, True), (False, False)], ids=["bf16+cl", "fp32"])
def test_a_training_step_never_synchronises_with_the_host(amp, channels_last):
    from training.byol import train_step

    state = _state()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    state.online.to(memory_format=layout)
    state.target.to(memory_format=layout)
    batches = [state.batcher.next() for _ in range(3)]
    train_step(state.online, state.target, state.optimizer, state.augment, batches[0], state.generator, 0.1, 0.99,
               amp=amp, channels_last=channels_last)  # warm-up: first-call allocations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images in batches[1:]:
            train_step(state.online, state.target, state.optimizer, state.augment, images, state.generator, 0.1,
                       0.99, amp=amp, channels_last=channels_last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_auto_precision_measures_every_candidate_on_the_gpu():
    from training.distributed import DistInfo
    from training.state import choose_precision

    state = _state()
    choice = choose_precision(state, torch.device("cuda"), DistInfo())
    assert choice.measured and choice.images_per_s
    assert all(v > 0 for v in choice.images_per_s.values())
    assert state.cfg.train.precision == choice.precision  # the run's config says what it runs


def test_a_tiny_run_trains_end_to_end_on_the_gpu(tmp_path):
    from training.train import train

    cfg = _cfg(("train.steps=6", "train.epochs=none", "train.max_minutes=none", "train.knn_every=3",
                "train.checkpoint_every=3", "train.progress=false"))
    res = train(cfg, tmp_path, data=_images(), holdout=_images(128))
    assert res.steps == 6 and res.metrics["precision"]["precision"] in ("fp32", "bf16")
    saved = torch.load(res.encoder_path, weights_only=True)  # tensors come back on the device they were saved from
    assert {t.device.type for t in saved["state_dict"].values()} == {"cpu"}  # export reads it on a CPU-only box
