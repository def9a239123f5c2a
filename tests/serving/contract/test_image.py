"""The image contract on real odd files: every readable image becomes RGB uint8 [S, S, 3], every broken one an
ImageError with a message a caller can act on, and the answer never depends on what was decoded before."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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
