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
