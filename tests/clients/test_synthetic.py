"""The generator of photo-like labelled folders (``clients.workflows.synthetic``): deterministic, laid out like a
user's folder (nested, PNG and JPEG, broken files), labels only in ``labels.csv``, and hard for raw pixels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from clients.workflows.synthetic import BROKEN, CLASSES, KINDS, LABELS_CSV, make_folder, read_labels, render
from serving.contract.image import ImageError, decode
from serving.contract.sources import iter_image_files


def digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_same_bytes_and_a_smaller_folder_is_a_prefix_of_a_larger_one(tmp_path):
    a = make_folder(tmp_path / "a", "objects", 32, 24)
    b = make_folder(tmp_path / "b", "objects", 32, 24)
    small = make_folder(tmp_path / "small", "objects", 32, 10, broken=False)
    assert digest(a.root) == digest(b.root)
    big = digest(a.root)
    assert all(big[p] == h for p, h in digest(small.root).items() if p != LABELS_CSV)
    other = make_folder(tmp_path / "c", "objects", 32, 24, seed=1)
    assert digest(other.root)[other.paths[0]] != big[a.paths[0]]


def test_the_folder_is_nested_mixes_png_and_jpeg_and_its_names_say_nothing_of_the_classes(tmp_path):
    f = make_folder(tmp_path / "f", "textures", 32, 60)
    files = [p.relative_to(f.root).as_posix() for p in iter_image_files(f.root)]
    assert len(files) == 60 + len(BROKEN)
    assert {p.rsplit(".", 1)[1] for p in f.paths} == {"png", "jpg"}
    assert max(p.count("/") for p in f.paths) == 2 and min(p.count("/") for p in f.paths) == 1
    names = {part for p in files for part in p.split("/")[:-1]}
    assert not names & set(CLASSES["textures"])


def test_broken_files_are_unreadable_and_unlabelled(tmp_path):
    f = make_folder(tmp_path / "f", "scenes", 32, 12)
    assert f.broken == BROKEN
    for rel in BROKEN:
        with pytest.raises((ImageError, OSError)):
            decode((f.root / rel).read_bytes())
    assert not set(BROKEN) & set(read_labels(f.root))


def test_labels_csv_lists_every_readable_image_with_its_class_and_probe_fit_can_read_it(tmp_path):
    from serving.contract.splits import read_labels_csv

    f = make_folder(tmp_path / "f", "objects", 32, 30)
    rows = read_labels(f.root)
    assert (f.root / LABELS_CSV).read_text().splitlines()[0] == "path,label"
    assert rows == {p: CLASSES["objects"][y] for p, y in zip(f.paths, f.labels, strict=True)}
    assert np.bincount(f.labels).tolist() == [3] * 10  # balanced: labels cycle through the classes
    labelled = read_labels_csv(f.labels_csv, 32)
    assert len(labelled) == 30 and labelled.classes == sorted(CLASSES["objects"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [64, 128, 224])
def test_every_kind_renders_rgb_at_every_size(kind, size):
    pixels, label = render(kind, size, 13)
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8 and label == 3
    assert pixels.std() > 5  # a picture, not a flat fill


def test_raw_pixels_are_far_from_perfect_on_objects_and_textures():
    """What makes the folders a test of learning: the class is in a shape or a pattern, not in where the colours
    are (6,000 images at 64 px, bench/folder_quality.py: raw-pixel kNN@20 objects ~0.30, textures ~0.11)."""
    from index.metrics import knn_accuracy, pixel_features

    for kind, ceiling in (("objects", 0.5), ("textures", 0.3)):
        images, labels = zip(*(render(kind, 32, i) for i in range(600)), strict=True)
        x, y = pixel_features(np.stack(images)), np.array(labels)
        assert knn_accuracy(x[:500], y[:500], x[500:], y[500:]) < ceiling, kind


def test_the_command_writes_a_folder_and_says_where_the_labels_are(tmp_path, capsys):
    from clients.cli import main

    assert main(["sample-folder", str(tmp_path / "try"), "--kind", "textures", "--size", "32", "--n", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 textures images of 32 px in 10 classes" in out and LABELS_CSV in out
    assert len(read_labels(tmp_path / "try")) == 20
