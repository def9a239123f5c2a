"""The image contract: upload bytes → RGB uint8 ``[size, size, 3]``, in one torch-free place.

Serving, index building, evaluation of folders and the export parity check all call this, so a vector never
depends on who decoded the pixels. Normalisation (mean/std) is *not* here: it lives inside the ONNX graph.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset(
    {"JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "MPO", "ICO", "CUR", "PPM", "AVIF"}
)


@dataclass(frozen=True)
class ImageLimits:
    """Guards against oversized uploads and decompression bombs (checked before any pixel is decoded)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 20_000


DEFAULT_LIMITS = ImageLimits()


class ImageError(ValueError):
    """The upload is not an image we can embed; the message names the problem for the caller."""


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise ImageError("empty upload: the image has 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {limits.max_bytes})")
    # Every plugin registered (once; cheap after), in a fixed order: Pillow otherwise registers plugins lazily and
    # the format it guesses for an ambiguous file (an icon read as TGA) can depend on what was opened before.
    Image.init()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image: the bytes are no image format we can read") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from None
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError(
            f"unsupported image format {img.format!r}; supported: {', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
        raise ImageError(
            f"image dimensions too large: {w}x{h} (limits: {limits.max_side} px a side, "
            f"{limits.max_pixels} pixels)"
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode → RGB: high bit depth rescaled (not clipped), transparency composited on white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
        else:
            arr = arr.astype(np.float64)
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr8 = np.nan_to_num((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        has_alpha = "transparency" in img.info
        gray = Image.fromarray(arr8, mode="L")
        if not has_alpha:
            return gray.convert("RGB")
        img = gray
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(
            img, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                         "LAB", "RGB")
        )
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode upload bytes to an RGB image: first frame, EXIF orientation applied, limits enforced."""
    img = _open(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block must not lose an otherwise good image
                pass
            return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions too large (decompression bomb guard): {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    except MemoryError:
        raise ImageError("image too large to decode") from None


def fit(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop: uint8 ``[size, size, 3]``."""
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load(data: bytes, size: int, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Upload bytes → model input ``uint8 [size, size, 3]`` (raises :class:`ImageError`)."""
    return fit(decode(data, limits), size)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``) → PNG bytes: how dataset pixels become an upload-like file."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load_batch(items: list[bytes], size: int, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Several uploads → ``uint8 [N, size, size, 3]``; the error names the first bad item by position."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(items):
        try:
            out[i] = load(data, size, limits)
        except ImageError as exc:
            raise ImageError(f"image #{i}: {exc}") from None
    return out
