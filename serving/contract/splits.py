"""Labelled train/test splits, made one way for every evaluation (``byol eval``, ``byol probe fit``, the gate).

Data sets keep their own train/test splits; a labelled folder (class sub-folders) or a ``path,label`` CSV is split
80/20 by a seed. Subsets are seeded and sorted, so the same arguments give the same images everywhere.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from serving.contract.image import load
from serving.contract.sources import ImageSet, SourceError, dataset_name, decode_each, load_source

HOLDOUT_FRACTION = 0.2  # of a labelled folder or CSV, held out as its test split


def split_holdout(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Deterministic split by ``seed``: returns ``(train, holdout)``; holdout is None when ``fraction`` is 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n_hold = int(round(len(data) * fraction))
    if n_hold == 0:
        return data, None
    if n_hold >= len(data):
        raise SourceError(f"holdout of {n_hold} leaves no training images (only {len(data)} images)")
    perm = np.random.default_rng(seed).permutation(len(data))
    return data.subset(np.sort(perm[n_hold:])), data.subset(np.sort(perm[:n_hold]))


def subsample(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A seeded subset of ``n`` items in their original order (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(data):
        return data
    if n <= 0:
        raise SourceError(f"sizes must be positive, got {n}")
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:n]))


def read_labels_csv(path: str | Path, size: int) -> ImageSet:
    """``path,label`` rows (header optional; relative paths are relative to the CSV) → a labelled ImageSet."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.open(newline="")))
    except OSError as exc:
        raise SourceError(f"cannot read labels file {path}: {exc.strerror}") from None
    if rows and rows[0][:2] == ["path", "label"]:
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise SourceError(f"{path}:{n}: expected 'path,label', got {row!r}")
    entries = [(Path(r[0]) if Path(r[0]).is_absolute() else path.parent / r[0], r[1].strip()) for r in rows]
    missing = [str(f) for f, _ in entries if not f.is_file()]
    if missing:  # a typo in a labels file is an error, not a silently smaller evaluation
        raise SourceError(f"{path}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}")
    pixels, kept, skipped = decode_each(entries, lambda e: load(e[0].read_bytes(), size))
    if not pixels:
        raise SourceError(f"{path}: no readable labelled images")
    classes = sorted({name for _, name in kept})
    labels = np.array([classes.index(name) for _, name in kept], dtype=np.int64)
    return ImageSet(np.stack(pixels), labels, classes, [str(f.resolve()) for f, _ in kept], skipped)


def labelled_splits(spec: str, size: int, data_root: str | None = None, labels_csv: str | None = None,
                    max_train: int | None = None, max_test: int | None = None,
                    seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` of a data set, a labelled folder or a CSV, optionally seeded subsets of them."""
    if dataset_name(spec):
        train = load_source(spec, "train", size=size, data_root=data_root)
        test = load_source(spec, "test", size=size, data_root=data_root)
    else:
        full = read_labels_csv(labels_csv, size) if labels_csv else load_source(spec, size=size,
                                                                                labels_from_dirs=True)
        if full.labels is None or len(set(full.labels.tolist())) < 2:
            raise SourceError(f"{spec}: need at least 2 labelled classes (sub-folders or --labels FILE.csv)")
        train, test = split_holdout(full, HOLDOUT_FRACTION, seed)
    if train.labels is None or test is None or test.labels is None:
        raise SourceError(f"{spec}: evaluation needs labelled train and test images")
    train, test = subsample(train, max_train, seed), subsample(test, max_test, seed + 1)
    if len(test) == 0:
        raise SourceError("the held-out split is empty")
    return train, test
