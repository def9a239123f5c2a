"""Labelled splits, made one way for every evaluation: seeded, disjoint, reproducible."""

import numpy as np
import pytest

from serving.contract.sources import ImageSet, SourceError
from serving.contract.splits import labelled_splits, split_holdout, subsample


def _set(n=50):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    return ImageSet(images, np.arange(n) % 3)


def test_split_is_deterministic_and_disjoint():
    a_train, a_hold = split_holdout(_set(), 0.2, seed=5)
    b_train, b_hold = split_holdout(_set(), 0.2, seed=5)
    assert np.array_equal(a_hold.images, b_hold.images) and len(a_hold) == 10
    ids_train, ids_hold = set(a_train.images[:, 0, 0, 0]), set(a_hold.images[:, 0, 0, 0])
    assert not ids_train & ids_hold and len(ids_train | ids_hold) == 50


def test_split_depends_on_seed():
    _, a = split_holdout(_set(), 0.2, seed=1)
    _, b = split_holdout(_set(), 0.2, seed=2)
    assert not np.array_equal(a.images, b.images)


def test_subsample_is_seeded_sorted_and_refuses_non_positive_sizes():
    a, b = subsample(_set(), 10, seed=3), subsample(_set(), 10, seed=3)
    ids = a.images[:, 0, 0, 0].tolist()
    assert ids == b.images[:, 0, 0, 0].tolist() == sorted(ids) and len(ids) == 10
    with pytest.raises(SourceError, match="positive"):
        subsample(_set(), 0, seed=0)


def test_a_labelled_folder_splits_80_20_by_seed_without_overlap(tmp_path):
    from serving.contract.image import encode_png

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            (tmp_path / c / f"{i}.png").write_bytes(encode_png(np.full((8, 8, 3), 20 * i + (c == "b"), np.uint8)))
    train, test = labelled_splits(str(tmp_path), 8)
    assert (len(train), len(test)) == (16, 4) and not set(train.uris) & set(test.uris)
    assert train.classes == ["a", "b"] and labelled_splits(str(tmp_path), 8)[1].uris == test.uris


def test_an_unlabelled_folder_is_refused(tmp_path):
    from serving.contract.image import encode_png

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(SourceError, match="2 labelled classes"):
        labelled_splits(str(tmp_path), 8)


def test_the_standard_protocol_uses_the_whole_train_split_as_the_bank(fmnist_root):
    train, test = labelled_splits("fashion-mnist", 28, str(fmnist_root))
    assert (len(train), len(test)) == (60000, 10000) and train.uris[0] == "fashion-mnist:train/0"


def test_a_labels_csv_naming_missing_files_is_refused(tmp_path):
    from serving.contract.image import encode_png
    from serving.contract.splits import read_labels_csv

    (tmp_path / "a.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nnope.png,y\n")
    with pytest.raises(SourceError, match="1 listed file.*nope.png"):
        read_labels_csv(tmp_path / "labels.csv", 8)


def _labelled_tree(root, broken=False):
    from serving.contract.image import encode_png

    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            data = b"not an image" if broken else encode_png(np.full((8, 8, 3), 40 * i, np.uint8))
            (root / c / f"{i}.png").write_bytes(data)
    return root


@pytest.mark.parametrize("make,match", [
    (lambda root: root.mkdir(), "no image files"),
    (lambda root: _labelled_tree(root, broken=True), "none of the 6 image file"),
    (lambda root: (root.mkdir(), (root / "0.png").write_bytes(b"x")), "one sub-folder of images per class"),
    (lambda root: None, "not found"),
])
def test_labelled_data_that_cannot_work_is_refused_up_front(tmp_path, make, match):
    from serving.contract.splits import check_labelled

    make(tmp_path / "data")
    with pytest.raises(SourceError, match=match):
        check_labelled(str(tmp_path / "data"))


def test_a_sound_labelled_folder_and_csv_pass_the_check(tmp_path):
    from serving.contract.splits import check_labelled

    root = _labelled_tree(tmp_path / "data")
    check_labelled(str(root))
    (tmp_path / "labels.csv").write_text("path,label\n\ndata/cat/0.png,cat\ndata/dog/1.png,dog\n")
    check_labelled("ignored", labels_csv=str(tmp_path / "labels.csv"))
    (tmp_path / "one.csv").write_text("data/cat/0.png,cat\n")
    with pytest.raises(SourceError, match="at least 2 labels"):
        check_labelled("ignored", labels_csv=str(tmp_path / "one.csv"))
