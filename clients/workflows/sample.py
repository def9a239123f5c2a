"""A sample image to try the API with, so the README's ``curl -F image=@shirt.png`` works on any machine.

With Fashion-MNIST installed it is a real test-split image of the class asked for (the kind of image the demo's
encoder was trained on); without it, a drawn 28 px shirt silhouette in the same style (light garment on black), so
the command never needs a download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.contract.atomic import atomic_write_bytes
from serving.contract.image import encode_png
from serving.contract.sources import FASHION_MNIST_CLASSES, SourceError, load_fashion_mnist


def class_index(label: str) -> int:
    """A Fashion-MNIST class by name, case-insensitively (``shirt``, ``Ankle boot``) or by number."""
    if label.isdigit() and int(label) < len(FASHION_MNIST_CLASSES):
        return int(label)
    names = [c.lower() for c in FASHION_MNIST_CLASSES]
    if label.lower() not in names:
        raise ValueError(f"unknown label {label!r}; choose from {', '.join(FASHION_MNIST_CLASSES)}")
    return names.index(label.lower())


def drawn_shirt(size: int = 28) -> np.ndarray:
    """A long-sleeved shirt silhouette, uint8 ``[size, size, 3]``: body, sleeves, collar and a button line."""
    from PIL import Image, ImageDraw

    s = size / 28
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    body = [(11, 3), (17, 3), (22, 5), (26, 23), (22, 24), (20, 12), (20, 26), (8, 26), (8, 12), (6, 24), (2, 23),
            (6, 5)]
    d.polygon([(x * s, y * s) for x, y in body], fill=190)
    d.polygon([(x * s, y * s) for x, y in [(11, 3), (14, 7), (17, 3)]], fill=90)  # collar opening
    d.line([(14 * s, 7 * s), (14 * s, 26 * s)], fill=140, width=max(1, round(s)))  # button placket
    gray = np.asarray(img)
    return np.repeat(gray[..., None], 3, axis=-1)


def write_sample(out: str | Path, label: str = "Shirt", index: int = 0, data_root: str | None = None) -> dict:
    """Write the ``index``-th test image of class ``label`` as PNG to ``out`` → ``{"path", "source", "label"}``."""
    y = class_index(label)
    if index < 0:
        raise ValueError(f"--index must be >= 0, got {index}")
    try:
        test = load_fashion_mnist(data_root, "test")
    except SourceError:
        test = None
    if test is not None:
        hits = np.flatnonzero(test.labels == y)
        if index >= len(hits):
            raise ValueError(f"the test split has {len(hits)} images of {FASHION_MNIST_CLASSES[y]}; --index {index}")
        pixels, source = test.images[hits[index]], test.uris[hits[index]]
    else:
        if FASHION_MNIST_CLASSES[y] != "Shirt":
            raise SourceError("Fashion-MNIST is not installed: without it only the drawn Shirt is available")
        pixels, source = drawn_shirt(), "drawn (Fashion-MNIST not installed)"
    atomic_write_bytes(out, encode_png(pixels))
    return {"path": str(out), "source": source, "label": FASHION_MNIST_CLASSES[y]}
