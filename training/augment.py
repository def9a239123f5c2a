"""BYOL's asymmetric view distributions T and T′ (Grill et al. 2020, appendix B), batched on the training device.

Every random parameter is drawn per sample, for the whole batch at once, from one ``torch.Generator`` (same seed →
same views), and every op runs on the whole batch: crop + flip is one ``affine_grid``/``grid_sample`` call, the four
colour-jitter ops run in four "slots" whose per-sample op choice is a random permutation (non-chosen samples get the
op's neutral factor), blur is one depthwise conv per axis with a per-sample Gaussian kernel. There is no per-image
Python loop, so the augmentation keeps up with the model on a GPU instead of starving it.

Semantics follow torchvision (what a PyTorch BYOL recipe uses) where it differs from the JAX reference: brightness
is a multiplicative factor in [1 − b, 1 + b], contrast blends with the mean grey level, saturation blends with the
grey image, hue shifts H in HSV by δ ∈ [−h, h]. Each jitter op clips to [0, 1], as both references do. Blur uses
reflect padding and a kernel of ~10% of the output side (odd, ≥ 3). Crop boxes are continuous (not rounded to
whole pixels) and sampled like ``RandomResizedCrop`` (10 tries, then the whole image with its ratio clamped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

SOLARIZE_THRESHOLD = 0.5
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and the JAX reference
CROP_TRIES = 10
# Jitter op ids, in the order their factors are stored: the per-sample permutation ``order`` indexes these.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass
class ViewConfig:
    """One view distribution; the defaults are the paper's, except blur/solarize which differ between T and T′."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name, lo_min in (("crop_scale", 0.0), ("crop_ratio", 0.0), ("blur_sigma", 0.0)):
            pair = getattr(self, name)
            if len(pair) != 2 or not lo_min < pair[0] <= pair[1]:
                raise ValueError(f"augment {name} must be (low, high) with 0 < low <= high, got {pair}")
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"augment crop_scale must not exceed 1, got {self.crop_scale}")
        for name, limit in (("brightness", None), ("contrast", None), ("saturation", None), ("hue", 0.5)):
            value = getattr(self, name)
            if value < 0 or (limit is not None and value > limit):
                raise ValueError(f"augment {name} must be in [0, {limit or 'inf'}], got {value}")


@dataclass
class AugmentConfig:
    """The paper's T (view1: always blurred, never solarized) and T′ (view2: blur 0.1, solarize 0.2)."""

    view1: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=1.0, solarize_p=0.0))
    view2: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.1, solarize_p=0.2))

    def __post_init__(self) -> None:
        # from_dict / replace may hand us plain mappings for the nested views
        if isinstance(self.view1, dict):
            self.view1 = ViewConfig(**self.view1)
        if isinstance(self.view2, dict):
            self.view2 = ViewConfig(**self.view2)


# ---------------------------------------------------------------------------------------------------- sampling


def _uniform(lo: float, hi: float, shape: tuple[int, ...], generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device) * (hi - lo) + lo


def _bernoulli(p: float, batch: int, generator, device) -> Tensor:
    return torch.rand(batch, generator=generator, device=device) < p


def sample_crop_boxes(batch: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None, device=None) -> Tensor:
    """``RandomResizedCrop`` boxes ``[B, 4]`` as (x0, y0, width, height) in pixels of an ``h × w`` image.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the first of ``CROP_TRIES`` draws that fits is kept,
    else the whole image (ratio clamped into range, centred), exactly torchvision's fallback.
    """
    shape = (batch, CROP_TRIES)
    area = _uniform(scale[0], scale[1], shape, generator, device) * (h * w)
    log_r = _uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator, device)
    u_x, u_y = torch.rand((2, *shape), generator=generator, device=device)
    aspect = torch.exp(log_r)
    cw, ch = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (cw <= w) & (ch <= h)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting try (0 when none fits)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    x0 = u_x.gather(1, first).squeeze(1) * (w - cw)
    y0 = u_y.gather(1, first).squeeze(1) * (h - ch)
    # fallback: the whole image, its ratio clamped into range
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = float(w), w / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = h * ratio[1], float(h)
    else:
        fw, fh = float(w), float(h)
    any_fit = fits.any(dim=1)
    cw = torch.where(any_fit, cw, torch.full_like(cw, fw))
    ch = torch.where(any_fit, ch, torch.full_like(ch, fh))
    x0 = torch.where(any_fit, x0, torch.full_like(x0, (w - fw) / 2))
    y0 = torch.where(any_fit, y0, torch.full_like(y0, (h - fh) / 2))
    return torch.stack([x0, y0, cw, ch], dim=1)


def sample_view_params(cfg: ViewConfig, batch: int, h: int, w: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Draw every random parameter of one view for a batch of ``h × w`` images, in a fixed order.

    Returns ``crop`` [B, 4] (x0, y0, w, h in pixels), boolean masks ``flip``, ``jitter``, ``grayscale``, ``blur``,
    ``solarize`` [B], factors ``brightness``, ``contrast``, ``saturation`` (multiplicative, 1 = identity), ``hue``
    (shift, 0 = identity), ``sigma`` [B], and ``order`` [B, 4] (a permutation of the four jitter op ids per sample).
    Factors are drawn for every sample; the masks decide which are applied.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    g, d = generator, device
    p = {"crop": sample_crop_boxes(batch, h, w, cfg.crop_scale, cfg.crop_ratio, g, d)}
    p["flip"] = _bernoulli(cfg.flip_p, batch, g, d)
    p["jitter"] = _bernoulli(cfg.jitter_p, batch, g, d)
    p["brightness"] = _uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, (batch,), g, d)
    p["contrast"] = _uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, (batch,), g, d)
    p["saturation"] = _uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, (batch,), g, d)
    p["hue"] = _uniform(-cfg.hue, cfg.hue, (batch,), g, d)
    p["order"] = torch.rand((batch, 4), generator=g, device=d).argsort(dim=1)
    p["grayscale"] = _bernoulli(cfg.grayscale_p, batch, g, d)
    p["blur"] = _bernoulli(cfg.blur_p, batch, g, d)
    p["sigma"] = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], (batch,), g, d)
    p["solarize"] = _bernoulli(cfg.solarize_p, batch, g, d)
    return p


# ---------------------------------------------------------------------------------------------------- ops


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def crop_flip(images: Tensor, crop: Tensor, flip: Tensor, size: int) -> Tensor:
    """Resample each box to ``size × size`` (bilinear), mirrored where ``flip``: one ``grid_sample`` per batch.

    The sampling grid is the separable affine map of ``affine_grid`` built directly (no batched matmul): output
    pixel centres ``(2i + 1) / size − 1`` scaled to the box and shifted to its centre, in [-1, 1] image units
    (``align_corners=False``: -1 is the image's left/top edge).
    """
    b, _, h, w = images.shape
    x0, y0, cw, ch = (v.to(images.dtype).view(b, 1, 1) for v in crop.unbind(1))
    sign = torch.where(flip, -1.0, 1.0).to(images.dtype).view(b, 1, 1)
    centres = (2 * torch.arange(size, dtype=images.dtype, device=images.device) + 1) / size - 1
    gx = sign * (cw / w) * centres.view(1, 1, size) + ((2 * x0 + cw) / w - 1)
    gy = (ch / h) * centres.view(1, size, 1) + ((2 * y0 + ch) / h - 1)
    grid = torch.stack([gx.expand(b, size, size), gy.expand(b, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_gray(images: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]``."""
    r, g, b = images.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor · x + (1 − factor) · other`` per sample, clipped (brightness: other = 0; contrast: mean grey;
    saturation: grey image)."""
    f = _per_sample(factor)
    return (f * images + (1 - f) * other).clamp_(0.0, 1.0)


def shift_hue(images: Tensor, delta: Tensor) -> Tensor:
    """Rotate the HSV hue by ``delta`` turns per sample (0 = identity up to float round-off).

    Saturation and value are kept, so only the hue sextant is computed: ``h6 = 6·h`` from the max channel, then
    the closed-form HSV → RGB ``c_n = v − (v − min)·clamp(min(k, 4 − k), 0, 1)``, ``k = (n + h6) mod 6``.
    """
    r, g, b = images.unbind(1)
    maxc = images.amax(dim=1)
    minc = images.amin(dim=1)
    chroma = maxc - minc
    is_r, is_g = maxc == r, maxc == g
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    offset = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h6 = num / torch.where(chroma > 0, chroma, torch.ones_like(chroma)) + offset + 6.0 * delta.view(-1, 1, 1)
    # 5, 3, 1 made on the device: torch.tensor(list, device=cuda) is a blocking host→device copy every call
    n = (5.0 - 2.0 * torch.arange(3, dtype=images.dtype, device=images.device)).view(1, 3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    amount = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(1) - chroma.unsqueeze(1) * amount).clamp_(0.0, 1.0)


def color_jitter(images: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Brightness, contrast, saturation and hue in a per-sample random order, only where ``p['jitter']``.

    Slot k applies, to each sample, the op ``p['order'][:, k]``; brightness/contrast/saturation share one blend
    (each sample's blend target and factor picked by its op), hue runs on the slot's hue samples only.
    """
    one = torch.ones_like(p["brightness"])
    on = p["jitter"]
    x = images
    for slot in range(4):
        op = p["order"][:, slot]
        factor = torch.where(on & (op == BRIGHTNESS), p["brightness"], one)
        factor = torch.where(on & (op == CONTRAST), p["contrast"], factor)
        factor = torch.where(on & (op == SATURATION), p["saturation"], factor)
        gray = to_gray(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        target = torch.where(_per_sample(op == CONTRAST), mean, gray)
        target = torch.where(_per_sample(op == BRIGHTNESS), torch.zeros_like(target), target)
        x = blend(x, target, factor)
        # hue, the costly op (~20 elementwise passes): on a CPU only on this slot's hue samples (a zero shift, as
        # grayscale presets set, is skipped); on a GPU over the whole batch with a zero shift elsewhere, because a
        # boolean index would make the host wait for the device four times per view
        sel = on & (op == HUE) & (p["hue"] != 0)
        if x.is_cuda:
            x = torch.where(_per_sample(sel), shift_hue(x, torch.where(sel, p["hue"], 0.0)), x)
        else:
            x = x.index_put((sel,), shift_hue(x[sel], p["hue"][sel]))
    return x


def grayscale(images: Tensor, mask: Tensor) -> Tensor:
    """Luma copied to all three channels where ``mask``."""
    return torch.where(_per_sample(mask), to_gray(images).expand_as(images), images)


def blur_radius(size: int) -> int:
    """Kernel radius for a side of ``size`` px: kernel ≈ size / 10 (the reference's ``blur_divider``), odd, ≥ 3."""
    return max(1, int(size / 10.0 / 2.0))


def gaussian_blur(images: Tensor, sigma: Tensor, mask: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma where ``mask`` (a unit impulse elsewhere): two depthwise
    convs over the batch (groups = B·3), reflect-padded so borders keep their brightness."""
    b, c, h, w = images.shape
    r = blur_radius(min(h, w))
    r = min(r, h - 1, w - 1)
    if r < 1:
        return images
    xs = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(xs**2) / (2.0 * sigma.to(images.dtype).view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    impulse = (xs == 0).to(images.dtype).expand(b, -1)
    kernel = torch.where(mask.view(-1, 1), kernel, impulse)  # [B, K]
    kernel = kernel.repeat_interleave(c, dim=0)  # [B·C, K]
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return x.view(b, c, h, w)


def solarize(images: Tensor, mask: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """``1 − x`` for pixels ≥ threshold where ``mask``; other pixels and samples unchanged."""
    return torch.where(_per_sample(mask) & (images >= threshold), 1.0 - images, images)


def apply_view(images: Tensor, params: dict[str, Tensor], size: int) -> Tensor:
    """Apply one view's sampled ``params`` to float NCHW ``images`` in [0, 1] → ``[B, 3, size, size]`` in [0, 1].

    Order (as the reference): crop + flip, colour jitter, grayscale, blur, solarize, clip.
    """
    x = crop_flip(images, params["crop"], params["flip"], size)
    x = color_jitter(x.clamp(0.0, 1.0), params)
    x = grayscale(x, params["grayscale"])
    x = gaussian_blur(x, params["sigma"], params["blur"])
    x = solarize(x, params["solarize"])
    return x.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- module


def to_float_nchw(images: Tensor) -> Tensor:
    """uint8 (or float in [0, 1]) ``[B, H, W, 3]`` / ``[B, H, W, 1]`` / ``[B, H, W]`` → float32 ``[B, 3, H, W]``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"augment expects a torch.Tensor of images, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"augment expects images [B, H, W, 3] (NHWC), got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"augment needs a non-empty batch of images at least 2×2, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
    elif images.is_floating_point():
        x = images.permute(0, 3, 1, 2).float()
    else:
        raise ValueError(f"augment expects uint8 (or float in [0, 1]) images, got {images.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


class BYOLAugment(torch.nn.Module):
    """Two views (T, T′) of a uint8 NHWC batch, on the batch's device, deterministic given a generator."""

    def __init__(self, cfg: AugmentConfig, size: int) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"augment output size must be at least 2 px, got {size}")
        self.cfg = cfg
        self.size = int(size)

    @torch.no_grad()
    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                shard: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        """images: uint8 [B, H, W, 3] (NHWC, as ImageSet stores them), or [B, 2, S, S, 3] views already cropped
        from their files (``training.stream``), on any device → two float32
        [B, 3, size, size] views in [0, 1]; every random draw comes from ``generator`` (same seed → same views).

        ``shard=(rank, world)``: ``images`` is rank's contiguous slice of a global batch of B × world. The
        parameters are drawn for the whole global batch (from a generator seeded alike on every rank) and sliced,
        so the ranks together make exactly the views one process would make of the global batch (DDP ≡ 1 process).
        """
        if generator is not None and generator.device.type != images.device.type:
            raise ValueError(f"augment generator is on {generator.device} but the images are on {images.device}; "
                             "create the generator on the images' device")
        rank, world = shard
        precropped = images.ndim == 5  # [B, 2, S, S, C]: the two views' crops were cut from the files already
        x1, x2 = (to_float_nchw(images[:, 0]), to_float_nchw(images[:, 1])) if precropped else (to_float_nchw(images),
                                                                                                   None)
        b, _, h, w = x1.shape
        p1 = sample_view_params(self.cfg.view1, b * world, h, w, generator, x1.device)
        p2 = sample_view_params(self.cfg.view2, b * world, h, w, generator, x1.device)
        if world > 1:
            p1, p2 = ({k: v[rank * b:(rank + 1) * b] for k, v in p.items()} for p in (p1, p2))
        if precropped:  # same draws (the RNG stream does not depend on the data path), the crop is the whole view
            whole = torch.zeros(b, 4, device=x1.device)  # (0, 0, w, h) without a host→device copy
            whole[:, 2], whole[:, 3] = float(w), float(h)
            p1["crop"], p2["crop"] = whole, whole
            return apply_view(x1, p1, self.size), apply_view(x2, p2, self.size)
        return apply_view(x1, p1, self.size), apply_view(x1, p2, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
