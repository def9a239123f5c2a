"""The image contract: upload bytes → RGB uint8 ``[size, size, 3]``, in one torch-free place.

Decoding cost is bounded before any pixel is decoded: only the supported formats' plugins are tried, the size read
from the header is checked against :class:`ImageLimits`, and icon frames (which Pillow decodes while opening) are
measured from their own headers first. :func:`open_image` lets a caller budget a whole request the same way
(sizes of every image first, then :func:`load_opened` each).

Serving, index building, evaluation of folders and the export parity check all call this, so a vector never
depends on who decoded the pixels. Normalisation (mean/std) is *not* here: it lives inside the ONNX graph.
"""

from __future__ import annotations

import functools
import io
import struct
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
ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})
MAX_ICON_SIDE = 1024  # ICO/CUR frames are 256 px a side by the format; Pillow decodes one inside Image.open


class ImageError(ValueError):
    """The upload is not an image we can embed; the message names the problem for the caller."""


@functools.cache
def _supported_order() -> tuple[str, ...]:
    """The supported formats in Pillow's own registration order (every plugin registered first: a fixed order, so
    the format chosen for an ambiguous file never depends on what was opened before). Computed once: every open
    asks for it."""
    Image.init()
    return tuple(f for f in Image.ID if f in SUPPORTED_FORMATS)


def _check_icon_frames(data: bytes) -> None:
    """ICO/CUR: Pillow decodes the icon's frame inside ``Image.open`` (before any size check could run), and a frame
    may be a PNG of any size whatever the icon directory claims. Read each frame's real size from its own header
    (PNG IHDR or BMP info header) first."""
    if data[:4] not in (b"\0\0\1\0", b"\0\0\2\0") or len(data) < 6:
        return
    (count,) = struct.unpack_from("<H", data, 4)
    for entry in range(6, min(6 + 16 * count, len(data) - 15), 16):
        (offset,) = struct.unpack_from("<I", data, entry + 12)
        head = data[offset:offset + 26]
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            w, h = struct.unpack_from(">II", head, 16)
        elif len(head) >= 12 and struct.unpack_from("<I", head)[0] == 12:  # BITMAPCOREHEADER
            w, h = struct.unpack_from("<HH", head, 4)
        elif len(head) >= 12:
            w, h = struct.unpack_from("<ii", head, 4)
            w, h = abs(w), abs(h) // 2  # XOR image + AND mask
        else:
            continue  # Pillow reports the truncated frame itself
        if w > MAX_ICON_SIDE or h > MAX_ICON_SIDE:
            raise ImageError(f"image dimensions too large: an icon frame of {w}x{h} (icon frames are at most "
                             f"{MAX_ICON_SIDE} px a side)")


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Identify the image and check its size without decoding pixels (only supported formats are tried); raises
    :class:`ImageError`. Finish with :func:`load_opened` — a caller that budgets several images (their sizes first,
    then the pixels) opens each once."""
    if not data:
        raise ImageError("empty upload: the image has 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {limits.max_bytes})")
    _check_icon_frames(data)
    try:
        img = Image.open(io.BytesIO(data), formats=list(_supported_order()))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
        raise ImageError(
            f"image dimensions too large: {w}x{h} (limits: {limits.max_side} px a side, "
            f"{limits.max_pixels} pixels)"
        )
    return img


def _unidentified(data: bytes) -> ImageError:
    """No supported format reads the bytes: name the format when another Pillow plugin knows it."""
    try:
        other = Image.open(io.BytesIO(data)).format
    except Exception:  # anything at all: the bytes are not an image we could name
        other = None
    if other and other not in SUPPORTED_FORMATS:
        return ImageError(f"unsupported image format {other!r}; supported: {', '.join(sorted(SUPPORTED_FORMATS))}")
    return ImageError("not an image: the bytes are no image format we can read")


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
    return img if mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image


def decode(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode upload bytes to an RGB image: first frame, EXIF orientation applied, limits enforced before decoding.

    Pillow's warnings are not silenced here (``warnings.catch_warnings`` is process-global, not thread-safe, and
    decoding runs in a thread pool): sizes past our limits are refused before Pillow would warn about them.
    """
    return decode_opened(open_image(data, limits))


def _may_turn(img: Image.Image) -> bool:
    """Whether ``img`` (loaded) has any source Pillow reads an orientation from (``Image.getexif``: EXIF or XMP in
    its info, TIFF tags); without one ``exif_transpose`` is a no-op that still costs a tenth of a small PNG's
    decode."""
    return hasattr(img, "tag_v2") or not ORIENTATION_SOURCES.isdisjoint(img.info)


def decode_opened(img: Image.Image) -> Image.Image:
    """:func:`decode` of an image :func:`open_image` returned (its limits already checked)."""
    try:
        img.seek(0)
        img.load()
        if _may_turn(img):
            try:
                ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image that needs no turn
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


def load_opened(img: Image.Image, size: int) -> np.ndarray:
    """:func:`load` of an image :func:`open_image` returned."""
    return fit(decode_opened(img), size)


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
