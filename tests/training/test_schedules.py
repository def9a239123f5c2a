import math

import pytest

from training.schedules import lr_at, scaled_lr, tau_at


def test_tau_starts_at_base_and_ends_at_one():
    assert tau_at(0, 100, 0.996) == pytest.approx(0.996)
    assert tau_at(100, 100, 0.996) == pytest.approx(1.0)


def test_tau_matches_the_paper_formula_mid_run():
    k, big_k, base = 30, 100, 0.99
    expected = 1 - (1 - base) * (math.cos(math.pi * k / big_k) + 1) / 2
    assert tau_at(k, big_k, base) == pytest.approx(expected)
    assert tau_at(50, 100, 0.99) == pytest.approx(0.995)


def test_lr_is_linear_in_warmup_then_cosine_to_zero():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_lr_scales_with_global_batch():
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2)


def test_lr_keeps_climbing_linearly_through_the_time_budget_calibration(tmp_path):
    """The budget lowers K after a few timed steps; warmup was fixed at the start, so the logged lr rises by the
    same increment at every step of the warmup, across the calibration (it used to jump when warmup followed K)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from serving.contract.sources import ImageSet
    from tests.conftest import sample_images
    from training.config import apply_overrides, preset
    from training.train import train

    cfg = apply_overrides(preset("fmnist-demo"), [
        "encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=16", "train.steps=100000", "optim.warmup_steps=40", "train.max_minutes=0.05",
        "train.calibrate_steps=2", "train.calibrate_after=1", "train.log_every=1", "train.knn_every=0",
        "train.checkpoint_every=0", "train.progress=false", "train.device=cpu"])
    res = train(cfg, tmp_path, data=ImageSet(sample_images(64)))
    assert res.metrics["total_steps"] < 100000  # the budget did lower K
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("train/lr")][:min(res.steps, 40)]
    assert len(lrs) >= 5
    steps = [b - a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert max(steps) == pytest.approx(min(steps), rel=1e-4)
