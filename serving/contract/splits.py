"""Labelled train/test splits, made one way for every evaluation (``byol eval``, ``byol probe fit``, the gate).

Data sets keep their own train/test splits; a labelled folder (class sub-folders) or a ``path,label`` CSV is split
80/20 by a seed. Subsets are seeded and sorted, so the same arguments give the same images everywhere.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from serving.contract.image import decode, load
from serving.contract.sources import ImageSet, SourceError, dataset_name, decode_each, iter_image_files, load_source

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


def _csv_entries(path: Path) -> list[tuple[Path, str]]:
    """``path,label`` rows (header optional; relative paths are relative to the CSV); every file must exist."""
    try:
        rows = list(csv.reader(path.open(newline="")))
    except OSError as exc:
        raise SourceError(f"cannot read labels file {path}: {exc.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not a path,label CSV: {exc}") from None
    first = 2 if rows and rows[0][:2] == ["path", "label"] else 1
    numbered = [(n, r) for n, r in enumerate(rows[first - 1:], first) if any(c.strip() for c in r)]  # no blanks
    for n, row in numbered:
        if len(row) < 2:
            raise SourceError(f"{path}:{n}: expected 'path,label', got {row!r}")
    rows = [r for _, r in numbered]
    if not rows:
        raise SourceError(f"{path}: no path,label rows")
    entries = [(Path(r[0]) if Path(r[0]).is_absolute() else path.parent / r[0], r[1].strip()) for r in rows]
    missing = [str(f) for f, _ in entries if not f.is_file()]
    if missing:  # a typo in a labels file is an error, not a silently smaller evaluation
        raise SourceError(f"{path}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}")
    return entries


def read_labels_csv(path: str | Path, size: int) -> ImageSet:
    """``path,label`` rows (header optional; relative paths are relative to the CSV) → a labelled ImageSet."""
    path = Path(path)
    entries = _csv_entries(path)
    pixels, kept, skipped = decode_each(entries, lambda e: load(e[0].read_bytes(), size))
    if not pixels:
        raise SourceError(f"{path}: no readable labelled images")
    classes = sorted({name for _, name in kept})
    labels = np.array([classes.index(name) for _, name in kept], dtype=np.int64)
    return ImageSet(np.stack(pixels), labels, classes, [str(f.resolve()) for f, _ in kept], skipped)


def _first_readable(files: list[Path], where: str) -> None:
    """Decode files until one reads (quietly: this is a check, the real read reports skips)."""
    for f in files:
        try:
            decode(f.read_bytes())
            return
        except (ValueError, OSError):
            continue
    raise SourceError(f"{where}: none of the {len(files)} image file(s) could be read")


def check_labelled(spec: str, labels_csv: str | None = None, data_root: str | None = None) -> None:
    """Fail fast — before minutes of training — when ``labelled_splits`` could not work: a missing path, an empty
    folder, a folder without class sub-folders or without one readable image, a CSV naming missing files. Cheap:
    it decodes only until the first image reads. Raises one :class:`SourceError` naming the problem."""
    if labels_csv:
        entries = _csv_entries(Path(labels_csv))
        if len({label for _, label in entries}) < 2:
            raise SourceError(f"{labels_csv}: need at least 2 labels to evaluate, found "
                              f"{len({label for _, label in entries})}")
        _first_readable([f for f, _ in entries], str(labels_csv))
        return
    if dataset_name(spec):
        load_source(spec, "test", data_root=data_root)  # raises when the data set's files are not there
        return
    root = Path(spec)
    if not root.exists():
        raise SourceError(f"labelled data not found: {spec} (a data set name, a folder with one sub-folder per "
                          "class, or a path,label CSV)")
    if root.is_file():
        raise SourceError(f"{spec}: labelled data is a folder of class sub-folders or a .csv of path,label rows")
    files = list(iter_image_files(root))
    if not files:
        raise SourceError(f"no image files under {root}")
    classes = {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    if len(classes) < 2:
        raise SourceError(f"{root}: a labelled folder needs one sub-folder of images per class (at least 2), "
                          f"found {len(classes)}")
    _first_readable(files, str(root))


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
