"""The image contract: upload bytes → RGB uint8 ``[size, size, 3]``, in one torch-free place.

Decoding cost is bounded before any pixel is decoded: the format is named by its signature (magic bytes) before
any Pillow plugin runs, and only that format's plugin reads the header; the size read from the header is checked
against :class:`ImageLimits`, and icon frames (which Pillow decodes while opening) are measured from their own
headers first. :func:`decode_cost` then says, from the header alone, how many bytes decoding will hold at its peak
(the decoded mode's bytes, the decoder's buffers, the conversion to RGB and the resize), so a caller can budget a
whole request in bytes (:mod:`serving.decode_memory`) before :func:`load_opened` decodes each image. Conversions of
deep or transparent modes run in row bands into one preallocated RGB image (never a float64 copy of the image).

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

TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
# Each supported format's signature, as its Pillow plugin's ``_accept`` reads the first 16 bytes (a test compares
# them): bytes that match none never reach a plugin.
SIGNATURES = {
    "BMP": lambda p: p.startswith(b"BM"),
    "DIB": lambda p: len(p) >= 4 and struct.unpack_from("<I", p)[0] in (12, 40, 52, 56, 64, 108, 124),
    "GIF": lambda p: p.startswith((b"GIF87a", b"GIF89a")),
    "ICO": lambda p: p.startswith(b"\0\0\1\0"),
    "CUR": lambda p: p.startswith(b"\0\0\2\0"),
    "JPEG": lambda p: p.startswith(b"\xff\xd8\xff"),
    "MPO": lambda p: p.startswith(b"\xff\xd8\xff"),
    "PNG": lambda p: p.startswith(b"\x89PNG\r\n\x1a\n"),
    "PPM": lambda p: len(p) >= 2 and p.startswith(b"P") and p[1] in b"0123456fy",
    "TIFF": lambda p: p.startswith(TIFF_PREFIXES),
    "WEBP": lambda p: p.startswith(b"RIFF") and p[8:12] == b"WEBP" and p[12:16] in (b"VP8 ", b"VP8L", b"VP8X"),
    "AVIF": lambda p: p[4:8] == b"ftyp" and p[8:12] in (b"avif", b"avis", b"mif1", b"msf1"),
}
# Formats we do not read, named by their signature in the error (no plugin runs for them either).
OTHER_SIGNATURES = ((b"8BPS", "PSD"), (b"%PDF", "PDF"), (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
                    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"), (b"\xff\x4f\xff\x51", "JPEG2000"),
                    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"\xff\x0a", "JPEG XL"), (b"icns", "ICNS"),
                    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"\x01\xda", "SGI"), (b"SIMPLE  =", "FITS"), (b"BLP", "BLP"),
                    (b"gimp xcf", "XCF"), (b"farbfeld", "Farbfeld"), (b"/* XPM */", "XPM"), (b"FLIF", "FLIF"))
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
TGA_FOOTER = b"TRUEVISION-XFILE.\x00"


@dataclass(frozen=True)
class ImageLimits:
    """Guards against oversized uploads and decompression bombs (checked before any pixel is decoded)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 20_000


DEFAULT_LIMITS = ImageLimits()
ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})
MAX_ICON_SIDE = 1024  # ICO/CUR frames are 256 px a side by the format; Pillow decodes one inside Image.open
DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
BAND_PIXELS = 2**18  # pixels converted at a time (deep and transparent modes)
BAND_TEMP_BYTES = 40  # bytes a band pixel may hold during a conversion (crop, numpy copy, float64 steps, paste)
FIXED_DECODE_BYTES = 2 * 2**20  # small buffers of any decode (rows, palettes, Python objects)
COST_MARGIN = 16  # + 1/16 of the estimate: allocator slack and codec buffers not modelled one by one


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


def formats_of(data: bytes) -> tuple[str, ...]:
    """The supported formats whose signature the bytes carry, in Pillow's order (the order it would try them):
    usually one (JPEG and MPO share theirs). Reads the first 16 bytes, as Pillow does; runs no plugin."""
    prefix = data[:16]
    return tuple(f for f in _supported_order() if SIGNATURES[f](prefix))


def _other_format(data: bytes) -> str | None:
    """A format we do not read, named by its own signature (no plugin runs), or None."""
    other = next((name for magic, name in OTHER_SIGNATURES if data.startswith(magic)), None)
    if other is None and data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        other = "HEIF"
    if other is None and data.endswith(TGA_FOOTER):  # TGA has no leading signature (it may even look like CUR)
        other = "TGA"
    return other


def _unsupported(name: str) -> ImageError:
    return ImageError(f"unsupported image format {name!r}; supported: {', '.join(sorted(SUPPORTED_FORMATS))}")


def _unrecognised(data: bytes) -> ImageError:
    """No supported signature: name a known format by its own signature, else say it is no image."""
    other = _other_format(data)
    if other:
        return _unsupported(other)
    return ImageError(f"not an image: the bytes carry the signature of no format we read "
                      f"({', '.join(sorted(SUPPORTED_FORMATS))})")


def _unreadable(data: bytes, formats: tuple[str, ...]) -> ImageError:
    """A supported signature, yet its plugin refused the header: another format's signature (a TGA may begin like
    a CUR), a codec this Pillow lacks, or a corrupt header."""
    other = _other_format(data)
    if other:
        return _unsupported(other)
    missing = [f for f in formats if isinstance(Image.OPEN[f][1](data[:16]), str)]
    if missing:
        return ImageError(f"unsupported image format {missing[0]!r}: this server's Pillow has no codec for it")
    return ImageError(f"corrupt image header: the bytes start like a {formats[0]} file but are not a readable one")


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Identify the image by its signature and check its size without decoding pixels (only the detected format's
    plugin runs); raises :class:`ImageError`. Finish with :func:`load_opened` — a caller that budgets several images
    (their sizes and :func:`decode_cost` first, then the pixels) opens each once."""
    if not data:
        raise ImageError("empty upload: the image has 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {limits.max_bytes})")
    formats = formats_of(data)
    if not formats:
        raise _unrecognised(data)
    _check_icon_frames(data)
    try:
        img = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise _unreadable(data, formats) from None
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


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow holds per pixel of ``mode`` (its storage, not the packed file layout): 1 for 1/L/P, 2 for
    I;16*, 4 for every other mode (RGB is padded to 4 bytes, LA/PA/La use 4, I and F are 32-bit)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _tiff_block_bytes(img: Image.Image) -> int:
    """Bytes libtiff decodes a compressed TIFF strip or tile into (a one-strip file: the whole raw image), counted
    at ≥ 4 bytes a pixel (Pillow's RGBA path), plus the file read whole (Pillow hands libtiff the bytes)."""
    tags = img.tag_v2
    w, h = img.size
    if 322 in tags and 323 in tags:  # TileWidth, TileLength
        block = int(tags[322]) * int(tags[323])
    else:
        block = w * min(h, max(1, int(tags.get(278, h))))  # RowsPerStrip
    bits = tags.get(258, (8,))
    bits = sum(bits) if isinstance(bits, tuple) else int(bits) * int(tags.get(277, 1))
    return block * max(4, -(-bits // 8)) + _data_len(img)


def _data_len(img: Image.Image) -> int:
    return len(img.fp.getbuffer()) if isinstance(img.fp, io.BytesIO) else 0


def _decoder_bytes(img: Image.Image, px: int, stored: int) -> int:
    """What the format's decoder holds beside the image while it loads (measured: tests/serving/contract)."""
    fmt = img.format
    if fmt in ("JPEG", "MPO"):
        data = img.fp.getvalue() if isinstance(img.fp, io.BytesIO) else b""
        multi_scan = "progressive" in img.info or not data or data.count(b"\xff\xda") > 1
        return 2 * len(img.getbands()) * px if multi_scan else 0  # libjpeg's whole-image coefficients
    if fmt == "TIFF":
        return _tiff_block_bytes(img) if img.tile and img.tile[0][0] == "libtiff" else 0
    if fmt in ("WEBP", "AVIF"):
        return (16 if fmt == "WEBP" else 12) * px  # the codec's frame (and canvas), the frame handed over as bytes
    if fmt == "PNG" and getattr(img, "is_animated", False):
        return stored  # the previous frame kept for disposal
    if fmt in ("ICO", "CUR"):
        return 4 * stored  # the frame, its mask and their composite (frames are at most 1024 px a side)
    return stored if fmt in ("BMP", "DIB", "PPM", "GIF") else 0  # RLE / plain-text / LZW buffers


def decode_cost(img: Image.Image, size: int | None = None) -> int:
    """Peak bytes :func:`load_opened` (``size`` given) or :func:`decode_opened` holds for an image
    :func:`open_image` returned, read from its header: the largest of loading (the decoded mode + the decoder's
    buffers), turning it upright (a second copy, in formats that carry an orientation), converting it to RGB (the
    source + a 4-byte RGB image + one band of temporaries) and resizing (the RGB image + the resize's rows)."""
    w, h = img.size
    px, stored = w * h, stored_bytes_per_pixel(img.mode) * w * h
    load = stored + _decoder_bytes(img, px, stored)
    turn = 2 * stored  # exif_transpose: the turned copy before the source goes (any format may carry XMP)
    banded = img.mode in DEEP_MODES or (_alpha(img) and img.mode != "LAB")
    rgb = 0 if img.mode == "RGB" and not banded else 4 * px
    convert = stored + rgb + (BAND_TEMP_BYTES * min(px, BAND_PIXELS) if banded else 0)
    resize = 0 if size is None else stored + rgb + 4 * size * max(w, h) + 4 * size * size
    peak = max(load, turn, convert, resize)
    return peak + peak // COST_MARGIN + FIXED_DECODE_BYTES


def _alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or "transparency" in img.info


def _bands(img: Image.Image):
    """``(top row, band image)`` over ``img`` in bands of about :data:`BAND_PIXELS` pixels (the whole image when it
    is that small: no crop)."""
    w, h = img.size
    rows = max(1, BAND_PIXELS // w)
    if rows >= h:
        yield 0, img
        return
    for top in range(0, h, rows):
        yield top, img.crop((0, top, w, min(h, top + rows)))


def _deep_levels(img: Image.Image):
    """I;16* / I / F → the function turning one band's values into 8-bit gray, exactly as one whole-image pass would:
    16-bit values shifted (>> 8, when any is above 255), others rescaled from the image's own (NaN-free) min..max
    in float64 (not clipped). The extremes are gathered band by band first."""
    lo = hi = None
    for _, band in _bands(img):
        arr = np.asarray(band)
        if img.mode == "F":
            b_lo, b_hi = np.fmin.reduce(arr, axis=None), np.fmax.reduce(arr, axis=None)  # NaN only if all NaN
        else:
            b_lo, b_hi = arr.min(), arr.max()
        lo = b_lo if lo is None else np.fmin(lo, b_lo)
        hi = b_hi if hi is None else np.fmax(hi, b_hi)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        if hi > 255:
            return lambda arr: (arr >> 8).astype(np.uint8)
        return lambda arr: arr.astype(np.uint8)
    lo, hi = float(lo), float(hi)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0

    def rescale(arr: np.ndarray) -> np.ndarray:
        out = arr.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # inf x 0 → NaN → 0, as the whole-image pass did
            out -= lo
            out *= scale
        np.nan_to_num(out, copy=False)
        return np.clip(out, 0, 255, out=out).astype(np.uint8)

    return rescale


def _banded_rgb(img: Image.Image, convert) -> Image.Image:
    """``convert`` (band → RGB-able image) applied band by band into one preallocated RGB image."""
    out = Image.new("RGB", img.size)
    for top, band in _bands(img):
        out.paste(convert(band), (0, top))  # an L band pastes as R = G = B
    return out


def _on_white(band: Image.Image) -> Image.Image:
    rgba = band.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode → RGB: high bit depth rescaled (not clipped) to gray, transparency composited on white. Deep and
    transparent modes convert band by band (peak: the source + the RGB image + one band's temporaries)."""
    mode = img.mode
    if mode in DEEP_MODES:
        levels = _deep_levels(img)
        return _banded_rgb(img, lambda band: Image.fromarray(levels(np.asarray(band))))
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(  # row by row into a new RGB image
            img, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                         "LAB", "RGB")
        )
    if _alpha(img):
        return _banded_rgb(img, _on_white)
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
