"""The image contract on real odd files: every readable image becomes RGB uint8 [S, S, 3], every broken one an
ImageError with a message a caller can act on, and the answer never depends on what was decoded before."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from serving.contract import image
from serving.contract.encoder import OnnxEncoder
from tests.conftest import ODD_IMAGES, REPO

SIZE = 32
ROWS = [] if not (ODD_IMAGES / "MANIFEST.tsv").is_file() else list(csv.DictReader(
    (line for line in (ODD_IMAGES / "MANIFEST.tsv").read_text().splitlines() if not line.startswith("#")),
    delimiter="\t"))
OK = [r["file"] for r in ROWS if r["pillow_result"] == "ok"]
BROKEN = [r["file"] for r in ROWS if r["pillow_result"] != "ok"]
USEFUL = r"^(empty upload|image too large|not an image|unsupported image format|corrupt|image dimensions too large)"


def _read(odd_images, name: str) -> bytes:
    return (odd_images / name).read_bytes()


def _outcome(data: bytes) -> str:
    """A comparable answer for one file: the pixels' digest, or the error message."""
    try:
        return hashlib.sha256(image.load(data, SIZE).tobytes()).hexdigest()
    except image.ImageError as exc:
        return f"ImageError: {exc}"


@pytest.mark.parametrize("name", OK)
def test_readable_file_gives_rgb_uint8_square(odd_images, name):
    arr = image.load(_read(odd_images, name), SIZE)
    assert (arr.dtype, arr.shape) == (np.uint8, (SIZE, SIZE, 3))


@pytest.mark.parametrize("name", BROKEN)
def test_broken_file_raises_image_error_with_reason(odd_images, name):
    with pytest.raises(image.ImageError, match=USEFUL):
        image.load(_read(odd_images, name), SIZE)


def test_table_is_complete(odd_images):
    assert len(OK) + len(BROKEN) == len(ROWS) == 64


def test_answer_does_not_depend_on_decode_order(odd_images):
    """Forward order here, reverse order in a fresh process, shuffled order here again: identical answers."""
    names = [r["file"] for r in ROWS]
    forward = {n: _outcome(_read(odd_images, n)) for n in names}
    code = "\n".join([
        "import hashlib, json, sys", "from pathlib import Path", "from serving.contract import image",
        "def outcome(data):", "    try:",
        f"        return hashlib.sha256(image.load(data, {SIZE}).tobytes()).hexdigest()",
        "    except image.ImageError as exc:", "        return f'ImageError: {exc}'",
        "names, root = json.loads(sys.argv[1]), Path(sys.argv[2])",
        "print(json.dumps({n: outcome((root / n).read_bytes()) for n in reversed(names)}))"])
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(names), str(odd_images)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    again = {n: _outcome(_read(odd_images, n)) for n in shuffled}
    assert json.loads(proc.stdout) == forward == again


@pytest.mark.parametrize("name, transpose", [("hopper_orientation_6.jpg", Image.Transpose.ROTATE_270),
                                             ("hopper_orientation_8.jpg", Image.Transpose.ROTATE_90),
                                             ("hopper_orientation_6.webp", Image.Transpose.ROTATE_270)])
def test_exif_orientation_rotates_like_a_manual_rotation(odd_images, name, transpose):
    data = _read(odd_images, name)
    manual = Image.open(io.BytesIO(data)).convert("RGB").transpose(transpose)
    assert np.array_equal(np.asarray(image.decode(data)), np.asarray(manual))


def test_exif_orientation_gives_the_upright_picture(odd_images):
    upright = np.asarray(image.decode(_read(odd_images, "hopper.bmp")), dtype=np.float64)
    stored = np.asarray(Image.open(odd_images / "hopper_orientation_6.jpg").convert("RGB"), dtype=np.float64)
    decoded = np.asarray(image.decode(_read(odd_images, "hopper_orientation_6.jpg")), dtype=np.float64)
    # JPEG noise vs a quarter turn: the decoded one is near the upright original, the stored pixels are not
    assert np.abs(decoded - upright).mean() < 10 < 40 < np.abs(stored - upright).mean()


EMBED_CATEGORIES = ("cmyk", "high-bit-depth", "palette-or-trns-transparency", "grayscale", "animated")


@pytest.mark.parametrize("category", EMBED_CATEGORIES)
def test_odd_modes_embed(odd_images, tiny_bundle, category):
    names = [r["file"] for r in ROWS if r["category"] == category and r["pillow_result"] == "ok"]
    enc = OnnxEncoder(tiny_bundle, intra_op_threads=1)
    vecs = enc.embed(image.load_batch([_read(odd_images, n) for n in names], enc.input_size))
    assert len(names) >= 2 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_animated_gives_first_frame(odd_images):
    with Image.open(odd_images / "dispose_bgnd.gif") as im:
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    decoded = np.asarray(image.decode(_read(odd_images, "dispose_bgnd.gif")))
    assert np.array_equal(decoded, first) and not np.array_equal(decoded, second)


def test_sixteen_bit_is_rescaled_not_clipped(odd_images):
    raw = np.asarray(Image.open(odd_images / "16bit.MM.deflate.tif")).astype(np.uint32)
    decoded = np.asarray(image.decode(_read(odd_images, "16bit.MM.deflate.tif")))
    assert np.array_equal(decoded[..., 0], (raw >> 8).astype(np.uint8))


def test_grayscale_becomes_three_equal_channels(odd_images):
    arr = image.load(_read(odd_images, "hopper_gray.jpg"), SIZE)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_transparency_is_composited_on_white(odd_images):
    assert image.load(_read(odd_images, "tRNS_null_1x1.png"), 4).min() == 255


def test_byte_limit(odd_images):
    with pytest.raises(image.ImageError, match=r"image too large: 49290 bytes \(limit 1000\)"):
        image.load(_read(odd_images, "hopper.bmp"), SIZE, image.ImageLimits(max_bytes=1000))


def test_pixel_limit(odd_images):
    with pytest.raises(image.ImageError, match=r"dimensions too large: 128x128"):
        image.load(_read(odd_images, "hopper.bmp"), SIZE, image.ImageLimits(max_pixels=100 * 100))


def test_side_limit(odd_images):
    with pytest.raises(image.ImageError, match=r"dimensions too large: 128x128 \(limits: 100 px a side"):
        image.load(_read(odd_images, "hopper.bmp"), SIZE, image.ImageLimits(max_side=100))


def test_batch_error_names_the_item(odd_images):
    with pytest.raises(image.ImageError, match=r"^image #1: not an image"):
        image.load_batch([_read(odd_images, "hopper.bmp"), _read(odd_images, "random_bytes.png")], SIZE)


def test_fit_centre_crops_to_a_square():
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (8, 0, 32, 20))  # white centre (a bit wider than the crop), black side bands
    assert image.fit(wide, 10).min() >= 250


# -- decoding budgeted in bytes: the conversions, their cost, the format by its signature ---------------------------
def _old_to_rgb(img: Image.Image) -> Image.Image:
    """The conversion as it was before it ran in bands (kept verbatim as the reference for the pixels)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
        else:
            arr = arr.astype(np.float64)
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            with np.errstate(invalid="ignore"):
                arr8 = np.nan_to_num((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        has_alpha = "transparency" in img.info
        gray = Image.fromarray(arr8)
        if not has_alpha:
            return gray.convert("RGB")
        img = gray
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(
            img, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                         "LAB", "RGB"))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _old_decode(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data), formats=list(image._supported_order()))
    img.seek(0)
    img.load()
    if image._may_turn(img):
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:
            pass
    return np.asarray(_old_to_rgb(img))


def _random_image(mode: str, size: tuple[int, int], seed: int, transparency=None) -> Image.Image:
    """Random raw bytes as ``mode`` (floats then include NaN and inf, ints negatives and values past 16 bits)."""
    rng = np.random.default_rng(seed)
    probe = Image.new(mode, (size[0], 1))
    img = Image.frombytes(mode, size, rng.integers(0, 256, len(probe.tobytes()) * size[1], np.uint8).tobytes())
    if mode in ("P", "PA"):
        img.putpalette(rng.integers(0, 256, 768, np.uint8).tobytes())
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def _typed(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr)


MODES = ["1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
         "I;16", "I;16B", "I;16L"]
SPECIAL = {
    "P + transparency index": lambda s: _random_image("P", s, 1, transparency=7),
    "P + transparency bytes": lambda s: _random_image("P", s, 2, transparency=bytes(range(0, 256, 3))),
    "L + transparency": lambda s: _random_image("L", s, 3, transparency=9),
    "1 + transparency": lambda s: _random_image("1", s, 4, transparency=0),
    "RGB + transparency": lambda s: _random_image("RGB", s, 5, transparency=(1, 2, 3)),
    "I;16 + transparency": lambda s: _random_image("I;16", s, 6, transparency=300),
    "I;16 at most 255": lambda s: _typed(np.random.default_rng(7).integers(0, 256, s[::-1], dtype=np.uint16)),
    "I within 16 bits": lambda s: _typed(np.random.default_rng(8).integers(0, 65536, s[::-1], dtype=np.int32)),
    "I at most 255": lambda s: _typed(np.random.default_rng(9).integers(0, 256, s[::-1], dtype=np.int32)),
    "I constant": lambda s: _typed(np.full(s[::-1], -5, np.int32)),
    "F ramp": lambda s: _typed(np.linspace(-3, 9, s[0] * s[1], dtype=np.float32).reshape(s[::-1])),
    "F constant": lambda s: _typed(np.full(s[::-1], 2.5, np.float32)),
    "F all NaN": lambda s: _typed(np.full(s[::-1], np.nan, np.float32)),
    "F NaN and inf": lambda s: _typed(np.where(np.arange(s[0] * s[1]) % 3 == 0, np.nan, np.where(
        np.arange(s[0] * s[1]) % 5 == 0, np.inf, np.arange(s[0] * s[1]))).astype(np.float32).reshape(s[::-1])),
}


@pytest.mark.parametrize("band_pixels", [image.BAND_PIXELS, 500])
@pytest.mark.parametrize("case", MODES + list(SPECIAL))
def test_banded_conversion_gives_the_pixels_of_the_whole_image_conversion(monkeypatch, case, band_pixels):
    """Every mode (random content: NaN, inf, negatives, 32-bit ints), converted in bands of 500 pixels too (uneven
    last band), gives exactly the pixels the former whole-image conversion gave."""
    monkeypatch.setattr(image, "BAND_PIXELS", band_pixels)
    for size in [(37, 23), (300, 41), (1, 1)]:
        img = SPECIAL[case](size) if case in SPECIAL else _random_image(case, size, 0)
        new, old = _converted(image._to_rgb, img), _converted(_old_to_rgb, img)
        if isinstance(old, str):  # a mode Pillow cannot convert (La): the same failure, which decode reports
            assert new == old
            continue
        assert new.mode == old.mode == "RGB" and new.size == old.size == size
        assert np.array_equal(np.asarray(new), np.asarray(old)), f"{case} {size}"


def _converted(convert, img: Image.Image) -> Image.Image | str:
    try:
        return convert(img.copy())
    except ValueError as exc:
        return f"ValueError: {exc}"


@pytest.mark.parametrize("name", OK)
def test_odd_files_decode_to_the_former_pixels(odd_images, monkeypatch, name):
    """Every readable odd file: the same pixels as the former open-with-every-supported-plugin + whole-image
    conversion, with the usual bands and with bands of 1,000 pixels."""
    data = _read(odd_images, name)
    old = _old_decode(data)
    assert np.array_equal(np.asarray(image.decode(data)), old)
    monkeypatch.setattr(image, "BAND_PIXELS", 1000)
    assert np.array_equal(np.asarray(image.decode(data)), old)


def _prefixes(odd_root) -> list[bytes]:
    """First bytes of real files of every supported format, of the odd files, of near-misses and of noise."""
    out = []
    for fmt, options in [("BMP", {}), ("DIB", {}), ("GIF", {}), ("ICO", {}), ("JPEG", {}), ("PNG", {}), ("PPM", {}),
                         ("TIFF", {}), ("TIFF", {"big_tiff": True}), ("WEBP", {}), ("WEBP", {"lossless": True}),
                         ("AVIF", {}), ("TGA", {}), ("PDF", {}), ("QOI", {})]:
        buf = io.BytesIO()
        try:
            Image.new("RGB", (16, 16), (9, 99, 199)).save(buf, fmt, **options)
        except (KeyError, OSError, TypeError):
            continue
        out.append(buf.getvalue()[:16])
    if odd_root is not None:
        out += [p.read_bytes()[:16] for p in odd_root.iterdir() if p.name != "MANIFEST.tsv"]
    rng = np.random.default_rng(0)
    out += [rng.integers(0, 256, n, np.uint8).tobytes() for n in (0, 1, 2, 3, 4, 16) for _ in range(50)]
    near = [p[:k] + bytes([p[k] ^ 1]) + p[k + 1:] for p in out[:20] for k in range(min(len(p), 16))]
    dib = [struct.pack("<I", n) + b"\0" * 12 for n in (11, 12, 40, 41, 124, 125)]
    ppm = [b"P" + bytes([c]) + b"\n" for c in b"0123456789fyFz"]
    return out + near + dib + ppm + [b"RIFF\0\0\0\0WEBPVP8X", b"\0\0\0\x1cftypmif1", b"\0\0\0\x1cftypheic"]


def _accepts(fmt: str, prefix: bytes) -> bool:
    try:
        return bool(Image.OPEN[fmt][1](prefix))
    except (IndexError, struct.error):  # what Pillow's open() catches around an accept
        return False


def test_signatures_name_the_formats_pillows_plugins_would_try():
    """The signature table agrees with each supported plugin's own ``_accept`` on every prefix tried: a file that
    opened before opens with the same plugin now, and no other bytes reach a plugin."""
    odd_root = ODD_IMAGES if (ODD_IMAGES / "MANIFEST.tsv").is_file() else None
    prefixes = _prefixes(odd_root)
    assert len(prefixes) > 500
    for prefix in prefixes:
        expected = tuple(f for f in image._supported_order() if _accepts(f, prefix))
        assert image.formats_of(prefix) == expected, prefix


def test_bytes_of_no_signature_never_reach_a_plugin(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Pillow plugin ran")

    monkeypatch.setattr(Image, "open", refuse)
    for data in (b"hello, I am text", b"\0" * 64, bytes(range(256)), b"GIF88a" + b"\0" * 20):
        with pytest.raises(image.ImageError, match=r"^not an image: .*\(AVIF, BMP, CUR, DIB, GIF, ICO, JPEG"):
            image.open_image(data)


def _saved(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PSD", "PDF", "TGA", "QOI", "JPEG2000", "HEIF"])
def test_a_known_unsupported_format_is_named_by_its_signature(monkeypatch, fmt):
    data = {"PSD": b"8BPS\0\1" + b"\0" * 40, "PDF": b"%PDF-1.7\n" + b"\0" * 40, "QOI": b"qoif" + b"\0" * 40,
            "TGA": _saved("TGA"),
            "JPEG2000": b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0" * 40, "HEIF": b"\0\0\0\x18ftypheic" + b"\0" * 40}[fmt]
    if fmt != "TGA":  # a TGA has no leading signature: Pillow's own TGA begins like a CUR, whose plugin refuses it
        monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("a Pillow plugin ran"))
    with pytest.raises(image.ImageError, match=rf"^unsupported image format '{fmt}'; supported: AVIF, BMP"):
        image.open_image(data)


def test_a_supported_signature_with_a_broken_header_is_a_corrupt_header():
    with pytest.raises(image.ImageError, match=r"^corrupt image header: .*PNG"):
        image.open_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


STORAGE = r"""
import json, sys
from PIL import Image, ImageMode

def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) * 1024

kept, grown = [], {}
for mode in sys.argv[1:]:
    bands = len(ImageMode.getmode(mode).bands)
    before = rss()
    kept.append(Image.new(mode, (4000, 2000), (7,) * bands if bands > 1 else 7))  # kept: no freed memory reused
    grown[mode] = (rss() - before) / (4000 * 2000)
print(json.dumps(grown))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stored_bytes_per_pixel_are_what_pillow_allocates():
    """RSS grown by an 8 Mpx image of each mode (a fresh process, every image kept) → Pillow's bytes a pixel."""
    proc = subprocess.run([sys.executable, "-c", STORAGE, *MODES], capture_output=True, text=True, timeout=60)
    grown = json.loads(proc.stdout)
    assert {m: round(g) for m, g in grown.items()} == {m: image.stored_bytes_per_pixel(m) for m in MODES}, grown


MEASURE = r"""
import io, json, sys, time
from pathlib import Path
import struct

from PIL import Image, ImageOps
from bench.decode_cost import hostile, _pattern, _save
from serving.contract import image

def peak_since(reset):
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) * 1024 - reset

def reset():
    Path("/proc/self/clear_refs").write_text("5")
    return int(dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())[
        "VmRSS"].split()[0]) * 1024

kind, side = sys.argv[1], int(sys.argv[2])
extra = {"png_RGBA": lambda s: _save(_pattern("RGBA", s, s), "PNG"),
         "png_P_trns": lambda s: _save(_pattern("RGB", s, s).convert("P"), "PNG", transparency=3),
         "jpeg_turned": lambda s: _save(_pattern("RGB", s, s), "JPEG", exif=bytes.fromhex(
             "4d4d002a00000008000101120003000000010006000000000000")),
         "webp": lambda s: _save(_pattern("RGBA", s, s), "WEBP", lossless=True),
         "gif": lambda s: _save(_pattern("RGB", s, s).convert("P"), "GIF")}
data = extra[kind](side) if kind in extra else hostile(kind, side)
img = image.open_image(data)
cost = image.decode_cost(img, 224)
start = reset()
image.load_opened(img, 224)
whole = peak_since(start)
img = image.open_image(data)
img.load()
start = reset()
image._to_rgb(img)
print(json.dumps({"cost": cost, "peak": whole, "convert": peak_since(start), "px": side * side, "mode": img.mode}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kind", ["tiff_F", "tiff_I", "tiff_I16", "tiff_LAB", "jpeg_cmyk", "png_I16", "png_RGBA",
                                  "png_P_trns", "jpeg_turned", "webp", "gif"])
def test_decode_cost_covers_the_measured_peak_and_conversions_stay_small(kind):
    """In a fresh process: the peak RSS of decoding a 2,500 px image (``VmHWM`` over the RSS before) is within
    :func:`image.decode_cost`, and the conversion to RGB alone adds at most the RGB image and one band — about 1x
    the RGB size, where the former whole-image conversion of a mode F image added ~7x."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, kind, "2500"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["peak"] <= got["cost"], got
    assert got["convert"] <= 4 * got["px"] * 1.1 + image.BAND_TEMP_BYTES * image.BAND_PIXELS, got
