"""Invariants of the batched BYOL view distributions (training/augment.py), one per test."""

from __future__ import annotations

import math

import pytest
import torch

from training.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentConfig,
    BYOLAugment,
    ViewConfig,
    apply_view,
    blend,
    color_jitter,
    crop_flip,
    gaussian_blur,
    grayscale,
    sample_view_params,
    shift_hue,
    solarize,
    to_float_nchw,
    to_gray,
)

N = 20_000  # draws for the distribution tests (parameters only: cheap)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 8, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=_gen(seed))


def _float_images(b: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 3, size, size), generator=_gen(seed))


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    """Empirical rate within 5 binomial standard deviations of p (exact when p is 0 or 1)."""
    rate = mask.float().mean().item()
    tol = 5 * math.sqrt(p * (1 - p) / mask.numel())
    assert abs(rate - p) <= tol, f"rate {rate:.4f} vs p {p} (tol {tol:.4f})"


def test_views_shape_dtype_range():
    v1, v2 = BYOLAugment(AugmentConfig(), 24)(_images(size=28), _gen())
    for v in (v1, v2):
        assert v.shape == (8, 3, 24, 24) and v.dtype == torch.float32
        assert v.min().item() >= 0.0 and v.max().item() <= 1.0


def test_same_seed_same_views():
    aug, images = BYOLAugment(AugmentConfig(), 28), _images()
    a, b = aug(images, _gen(3)), aug(images, _gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_other_seed_other_views():
    aug, images = BYOLAugment(AugmentConfig(), 28), _images()
    a, b = aug(images, _gen(3)), aug(images, _gen(4))
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_two_views_of_a_batch_differ():
    v1, v2 = BYOLAugment(AugmentConfig(), 28)(_images(), _gen())
    assert (v1 - v2).abs().flatten(1).amax(dim=1).min().item() > 0.05


def test_forward_is_sample_then_apply_per_view():
    """So the distribution tests on sampled parameters hold for the views ``forward`` makes."""
    cfg, images = AugmentConfig(), _images()
    v1, v2 = BYOLAugment(cfg, 24)(images, _gen(5))
    g, x = _gen(5), to_float_nchw(images)
    p1 = sample_view_params(cfg.view1, 8, 28, 28, g)
    p2 = sample_view_params(cfg.view2, 8, 28, 28, g)
    assert torch.equal(v1, apply_view(x, p1, 24)) and torch.equal(v2, apply_view(x, p2, 24))


def test_grayscale_input_shapes_give_the_same_views():
    rgb = _images()[..., :1].expand(-1, -1, -1, 3).contiguous()
    aug = BYOLAugment(AugmentConfig(), 28)
    ref = aug(rgb, _gen())
    for gray in (rgb[..., :1], rgb[..., 0]):
        out = aug(gray, _gen())
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("h,w", [(28, 28), (32, 48)])
def test_crop_boxes_within_scale_ratio_and_image(h, w):
    box = sample_view_params(ViewConfig(), N, h, w, _gen())["crop"]
    x0, y0, cw, ch = box.unbind(1)
    scale, ratio = cw * ch / (h * w), cw / ch
    assert scale.min() >= 0.08 - 1e-6 and scale.max() <= 1 + 1e-6
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + cw).max() <= w + 1e-4 and (y0 + ch).max() <= h + 1e-4


def test_crop_boxes_cover_the_scale_range():
    box = sample_view_params(ViewConfig(), N, 28, 28, _gen())["crop"]
    scale = box[:, 2] * box[:, 3] / 28**2
    assert scale.min() < 0.1 and scale.max() > 0.95 and 0.45 < scale.median() < 0.65


@pytest.mark.parametrize("key,prob", [("flip", "flip_p"), ("jitter", "jitter_p"), ("grayscale", "grayscale_p")])
def test_mask_rates_match_config(key, prob):
    cfg = ViewConfig(flip_p=0.3, jitter_p=0.7, grayscale_p=0.25)
    _assert_rate(sample_view_params(cfg, N, 28, 28, _gen())[key], getattr(cfg, prob))


def test_view1_always_blurred_never_solarized():
    p = sample_view_params(AugmentConfig().view1, N, 28, 28, _gen())
    assert p["blur"].all() and not p["solarize"].any()


def test_view2_blurred_a_tenth_solarized_a_fifth():
    p = sample_view_params(AugmentConfig().view2, N, 28, 28, _gen())
    _assert_rate(p["blur"], 0.1)
    _assert_rate(p["solarize"], 0.2)


def test_jitter_factors_within_ranges_and_order_is_a_permutation():
    cfg = ViewConfig()
    p = sample_view_params(cfg, N, 28, 28, _gen())
    for key in ("brightness", "contrast", "saturation"):
        width = getattr(cfg, key)
        assert p[key].min() >= 1 - width and p[key].max() <= 1 + width
    assert p["hue"].abs().max() <= cfg.hue
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert torch.equal(p["order"].sort(dim=1).values, torch.arange(4).expand(N, 4))


def test_jitter_order_varies_per_sample():
    first = sample_view_params(ViewConfig(), N, 28, 28, _gen())["order"][:, 0]
    for op in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
        _assert_rate(first == op, 0.25)


def test_solarize_inverts_bright_pixels_only():
    x = _float_images()
    out = solarize(x, torch.ones(8, dtype=torch.bool))
    bright = x >= 0.5
    assert torch.equal(out[bright], 1 - x[bright]) and torch.equal(out[~bright], x[~bright])


def test_solarize_leaves_unmasked_samples():
    x = _float_images()
    assert torch.equal(solarize(x, torch.zeros(8, dtype=torch.bool)), x)


def test_grayscale_gives_equal_channels_where_masked():
    mask = torch.tensor([True, False] * 4)
    out = grayscale(_float_images(), mask)
    assert torch.equal(out[mask, 0], out[mask, 1]) and torch.equal(out[mask, 1], out[mask, 2])
    assert not torch.equal(out[~mask, 0], out[~mask, 1])


def _checkerboard(b: int = 4, size: int = 32) -> torch.Tensor:
    idx = torch.arange(size)
    board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2).float()
    return board.expand(b, 3, size, size).contiguous()


def _high_freq_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-sample energy of neighbour differences (large for a checkerboard)."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3)) + (
        x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(1, 2, 3))


def test_blur_lowers_high_frequency_energy():
    board = _checkerboard()
    out = gaussian_blur(board, torch.tensor([0.5, 1.0, 1.5, 2.0]), torch.ones(4, dtype=torch.bool))
    assert (_high_freq_energy(out) < 0.5 * _high_freq_energy(board)).all()


def test_blur_keeps_mean_and_unmasked_samples():
    board = _checkerboard()
    out = gaussian_blur(board, torch.full((4,), 1.0), torch.tensor([True, False, True, False]))
    assert torch.equal(out[1], board[1]) and torch.equal(out[3], board[3])
    assert torch.allclose(out.mean(dim=(1, 2, 3)), board.mean(dim=(1, 2, 3)), atol=0.02)


def test_neutral_factors_are_identity():
    x, ones = _float_images(), torch.ones(8)
    assert torch.equal(blend(x, torch.zeros(1), ones), x)  # brightness 1
    assert torch.equal(blend(x, to_gray(x).mean(dim=(1, 2, 3), keepdim=True), ones), x)  # contrast 1
    assert torch.equal(blend(x, to_gray(x), ones), x)  # saturation 1
    assert torch.allclose(shift_hue(x, torch.zeros(8)), x, atol=1e-5)  # hue 0


def test_jitter_with_neutral_factors_is_identity():
    x = _float_images()
    p = sample_view_params(ViewConfig(jitter_p=1.0), 8, 16, 16, _gen())
    p.update(brightness=torch.ones(8), contrast=torch.ones(8), saturation=torch.ones(8), hue=torch.zeros(8))
    assert torch.allclose(color_jitter(x, p), x, atol=1e-5)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_applies_each_op_with_its_own_factor(op):
    x = _float_images()
    p = sample_view_params(ViewConfig(jitter_p=1.0), 8, 16, 16, _gen())
    neutral = {"brightness": torch.ones(8), "contrast": torch.ones(8), "saturation": torch.ones(8),
               "hue": torch.zeros(8)}
    value = torch.full((8,), 0.05 if op == "hue" else 0.7)
    p.update(neutral, **{op: value})
    gray = to_gray(x)
    expected = {
        "brightness": lambda: blend(x, torch.zeros(1), value),
        "contrast": lambda: blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), value),
        "saturation": lambda: blend(x, gray, value),
        "hue": lambda: shift_hue(x, value),
    }[op]()
    assert torch.allclose(color_jitter(x, p), expected, atol=1e-5)


def test_jitter_off_is_exact_identity():
    x = _float_images()
    p = sample_view_params(ViewConfig(jitter_p=0.0), 8, 16, 16, _gen())
    assert torch.equal(color_jitter(x, p), x)


def test_hue_shift_by_a_third_rotates_channels():
    x = _float_images()
    assert torch.allclose(shift_hue(x, torch.full((8,), 1 / 3)), x[:, [2, 0, 1]], atol=1e-5)


def test_whole_image_box_is_identity_and_flip_mirrors():
    x = _float_images(size=16)
    box = torch.tensor([0.0, 0.0, 16.0, 16.0]).expand(8, 4)
    no, yes = torch.zeros(8, dtype=torch.bool), torch.ones(8, dtype=torch.bool)
    assert torch.allclose(crop_flip(x, box, no, 16), x, atol=1e-5)
    assert torch.allclose(crop_flip(x, box, yes, 16), x.flip(-1), atol=1e-5)


def test_pixel_aligned_box_equals_slicing():
    x = _float_images(size=16)
    box = torch.tensor([3.0, 5.0, 8.0, 8.0]).expand(8, 4)  # x0, y0, w, h: resampled 1:1 to 8×8
    out = crop_flip(x, box, torch.zeros(8, dtype=torch.bool), 8)
    assert torch.allclose(out, x[..., 5:13, 3:11], atol=1e-5)


def test_uniform_image_stays_uniform_under_crop_and_flip():
    x = torch.full((16, 3, 28, 28), 0.37)
    p = sample_view_params(ViewConfig(), 16, 28, 28, _gen())
    out = crop_flip(x, p["crop"], p["flip"], 32)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-6)


def test_uint8_to_float_nchw():
    x = to_float_nchw(torch.full((2, 5, 7, 3), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and torch.equal(x, torch.ones_like(x))


@pytest.mark.parametrize("shape", [(4, 28, 28, 4), (28, 28), (0, 28, 28, 3)])
def test_bad_image_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="augment"):
        BYOLAugment(AugmentConfig(), 28)(torch.zeros(shape, dtype=torch.uint8))


def test_bad_probability_is_a_clear_error():
    with pytest.raises(ValueError, match="blur_p"):
        ViewConfig(blur_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_deterministic_on_device():
    aug, images = BYOLAugment(AugmentConfig(), 28), _images().cuda()
    a = aug(images, torch.Generator(device="cuda").manual_seed(0))
    b = aug(images, torch.Generator(device="cuda").manual_seed(0))
    assert a[0].device.type == "cuda" and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
