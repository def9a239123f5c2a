"""``byol probe fit``: a linear probe and a kNN classifier on frozen embeddings of a labelled set.

Accuracy on the held-out split is reported beside a raw-pixel kNN computed in the same run (the floor any
useful encoder must beat) and the random-init figures the bundle's manifest recorded at export, if any.
Both classifiers are saved at ``paths.probe_dir(version)`` tagged with the encoder version.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

from index.knn import KnnClassifier
from index.probe import LinearProbe
from serving import paths
from serving.contract.atomic import atomic_write_json
from serving.contract.image import ImageError, load
from serving.contract.sources import ImageSet, SourceError, load_source
from serving.indexing import embed_batches, open_encoder

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


def read_labels_csv(path: str | Path, size: int) -> ImageSet:
    """``path,label`` rows (header optional; relative paths are relative to the CSV) → a labelled ImageSet."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.open(newline="")))
    except OSError as exc:
        raise SourceError(f"cannot read labels file {path}: {exc.strerror}") from None
    if rows and rows[0][:2] == ["path", "label"]:
        rows = rows[1:]
    images, names, uris = [], [], []
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise SourceError(f"{path}:{n}: expected 'path,label', got {row!r}")
        file = Path(row[0]) if Path(row[0]).is_absolute() else path.parent / row[0]
        try:
            images.append(load(file.read_bytes(), size))
        except (ImageError, OSError) as exc:
            log.warning("skipping %s: %s", file, exc)
            continue
        names.append(row[1].strip())
        uris.append(str(file.resolve()))
    if not images:
        raise SourceError(f"{path}: no readable labelled images")
    classes = sorted(set(names))
    labels = np.array([classes.index(c) for c in names], dtype=np.int64)
    return ImageSet(np.stack(images), labels, classes, uris)


def split_sets(args: argparse.Namespace, size: int) -> tuple[ImageSet, ImageSet]:
    """Train and held-out sets: the data set's own splits, or a seeded 80/20 split of a labelled folder."""
    name = args.data.lower()
    if name in ("fashion-mnist", "fmnist", "fashion_mnist", "cifar10", "cifar-10"):
        train = load_source(args.data, "train", size=size, data_root=args.data_root)
        test = load_source(args.data, "test", size=size, data_root=args.data_root)
    else:
        full = read_labels_csv(args.labels, size) if args.labels else load_source(
            args.data, size=size, labels_from_dirs=True)
        if full.labels is None or len(set(full.labels.tolist())) < 2:
            raise SourceError(f"{args.data}: need at least 2 labelled classes (sub-folders or --labels FILE.csv)")
        order = np.random.default_rng(0).permutation(len(full))
        cut = max(1, int(0.8 * len(full)))
        train, test = full.subset(np.sort(order[:cut])), full.subset(np.sort(order[cut:]))
    return _cap(train, args.max_train), _cap(test, args.max_test)


def _cap(images: ImageSet, n: int | None) -> ImageSet:
    if n is None or n >= len(images):
        return images
    if n <= 0:
        raise SourceError(f"sizes must be positive, got {n}")
    return images.subset(np.sort(np.random.default_rng(0).permutation(len(images))[:n]))


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """Raw pixels as centred vectors: the baseline's 'embedding'."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x - x.mean(axis=1, keepdims=True) + 1e-6


def accuracy(model, X: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict_proba(X).argmax(axis=1) == y).mean())


def random_init_figures(metrics: dict) -> dict:
    """Whatever the export recorded under a ``random_init`` key (nested anywhere in the manifest metrics)."""
    if not isinstance(metrics, dict):
        return {}
    if isinstance(metrics.get("random_init"), dict):
        return metrics["random_init"]
    for v in metrics.values():
        found = random_init_figures(v)
        if found:
            return found
    return {}


def fit(args: argparse.Namespace) -> int:
    encoder = open_encoder(args.model)
    train, test = split_sets(args, encoder.input_size)
    if len(test) == 0:
        raise SourceError("the held-out split is empty")
    classes = train.classes or [str(i) for i in range(int(train.labels.max()) + 1)]
    xtr, xte = embed_batches(encoder, train.images, args.batch), embed_batches(encoder, test.images, args.batch)
    probe = LinearProbe.fit(xtr, train.labels, classes, encoder.version)
    knn = KnnClassifier(xtr, train.labels, classes, k=args.k, encoder_version=encoder.version)
    pixels = KnnClassifier(pixel_vectors(train.images), train.labels, classes, k=args.k)
    results = {
        "linear_probe": accuracy(probe, xte, test.labels),
        "knn": accuracy(knn, xte, test.labels),
        "raw_pixel_knn": accuracy(pixels, pixel_vectors(test.images), test.labels),
    }
    random_init = random_init_figures(encoder.manifest.metrics)
    out = paths.probe_dir(encoder.version)
    probe.save(out)
    knn.save(out)
    report = {"encoder_version": encoder.version, "data": args.data, "n_train": len(train), "n_test": len(test),
              "k": args.k, "accuracy": results, "random_init": random_init}
    atomic_write_json(out / REPORT_FILE, report)
    print(f"encoder {encoder.version}: {len(train)} train / {len(test)} held-out images, {len(classes)} classes")
    print(f"{'method':<24}{'accuracy':>10}")
    for name, acc in results.items():
        print(f"{name:<24}{acc:>10.2%}")
    for name, value in random_init.items():
        if isinstance(value, int | float):
            print(f"{'random_init ' + name:<24}{value:>10.2%}")
    print(f"saved linear probe + kNN at {out}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="byol probe", description="classifiers on frozen embeddings")
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit a linear probe + kNN and report held-out accuracy")
    f.add_argument("--model", default="latest")
    f.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10 or a folder")
    f.add_argument("--data-root", default=None)
    f.add_argument("--labels", default=None, help="CSV of path,label rows (for a folder)")
    f.add_argument("--max-train", type=int, default=None, help="fit on a random subset of N training images")
    f.add_argument("--max-test", type=int, default=None, help="evaluate on a random subset of N held-out images")
    f.add_argument("-k", "--k", type=int, default=20, help="neighbours for the kNN classifiers")
    f.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    return fit(args)
