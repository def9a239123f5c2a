"""Frozen-embedding evaluation: weighted kNN (cosine) and a linear probe, beside raw pixels and random init.

The metric functions take plain numpy embeddings, so the retrain gate can call them on ONNX outputs too.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from torch import nn

from serving.contract.atomic import atomic_write_json
from serving.contract.sources import ImageSet, SourceError, load_source

log = logging.getLogger(__name__)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@torch.no_grad()
def embed_images(encoder: nn.Module, images: np.ndarray, batch_size: int = 256,
                 device: str | torch.device | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` → L2-normalised float32 ``[N, D]`` (encoder in eval mode; its mode is restored)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    size = getattr(getattr(encoder, "cfg", None), "input_size", images.shape[1])
    if images.shape[1:3] != (size, size):
        raise ValueError(f"images are {images.shape[1]}×{images.shape[2]} px, the encoder expects {size}×{size}")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start: start + batch_size]).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            out.append(encoder(x).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    return _normalise(np.concatenate(out) if out else np.zeros((0, 1), np.float32))


def knn_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN (Wu et al. 2018, as in the SSL literature): cosine top-k, votes weighted by exp(sim / T)."""
    train_emb, test_emb = _normalise(train_emb), _normalise(test_emb)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    k = min(k, len(train_emb))
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_t = torch.from_numpy(train_emb)
    labels_t = torch.from_numpy(train_labels)
    correct = 0
    for start in range(0, len(test_emb), 1024):
        q = torch.from_numpy(test_emb[start: start + 1024])
        sim, idx = (q @ train_t.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes).scatter_add_(1, labels_t[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1).numpy() == test_labels[start: start + 1024]).sum())
    return correct / max(1, len(test_emb))


def linear_probe_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray,
                          test_labels: np.ndarray) -> float:
    """Multinomial logistic regression (lbfgs, deterministic) on standardised frozen embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
    clf.fit(np.asarray(train_emb, np.float32), np.asarray(train_labels))
    return float((clf.predict(np.asarray(test_emb, np.float32)) == np.asarray(test_labels)).mean())


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The baseline 'encoder': flattened pixels (cosine kNN on them is ~84% on Fashion-MNIST)."""
    return _normalise(images.reshape(len(images), -1).astype(np.float32))


def random_init_like(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """An untrained encoder of the same architecture (without touching the caller's RNG)."""
    from training.networks import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rnd = build_encoder(encoder.cfg)
    return rnd.to(next(encoder.parameters()).device).eval()


def evaluate(encoder: nn.Module, train: ImageSet, test: ImageSet, k: int = 20, include_baselines: bool = True,
             probe: bool = True) -> dict:
    """``{"trained": {"knn", "probe"}, "random_init": {...}, "raw_pixels": {...}}`` on labelled sets."""
    if train.labels is None or test.labels is None:
        raise SourceError("evaluation needs labelled images (Fashion-MNIST, CIFAR-10 or class sub-folders)")
    models = {"trained": encoder}
    if include_baselines:
        models["random_init"] = random_init_like(encoder)
    out: dict[str, dict] = {}
    for name, model in models.items():
        tr, te = embed_images(model, train.images), embed_images(model, test.images)
        out[name] = {"knn": knn_accuracy(tr, train.labels, te, test.labels, k=k)}
        if probe:
            out[name]["probe"] = linear_probe_accuracy(tr, train.labels, te, test.labels)
    if include_baselines:
        tr, te = raw_pixels(train.images), raw_pixels(test.images)
        out["raw_pixels"] = {"knn": knn_accuracy(tr, train.labels, te, test.labels, k=k)}
        if probe:
            out["raw_pixels"]["probe"] = linear_probe_accuracy(tr, train.labels, te, test.labels)
    return out


def _subsample(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:n]))


def load_eval_sets(spec: str, size: int, data_root: str | None, max_train: int | None, max_test: int | None,
                   seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Train/test splits of a dataset, or a seeded 80/20 split of a folder whose sub-folders are the classes."""
    if spec.lower() in ("fashion-mnist", "fmnist", "fashion_mnist", "cifar10", "cifar-10"):
        train = load_source(spec, "train", size=size, data_root=data_root)
        test = load_source(spec, "test", size=size, data_root=data_root)
    else:
        from training.data import split_holdout

        train, test = split_holdout(load_source(spec, size=size, labels_from_dirs=True), 0.2, seed)
    return _subsample(train, max_train, seed), _subsample(test, max_test, seed + 1)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byol eval", description="kNN and linear-probe accuracy of a BYOL encoder.")
    p.add_argument("--encoder", required=True, help="encoder.pt written by 'byol train'")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | DIR with class sub-folders")
    p.add_argument("--data-root", default=None)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--max-train", type=int, default=10000, help="labelled reference images (seeded subset)")
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--no-probe", action="store_true", help="kNN only (the probe is the slow part on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.artifact import load_encoder
    from training.distributed import DistInfo, local_device

    encoder, meta = load_encoder(args.encoder)
    encoder.to(local_device(args.device, DistInfo()))
    t0 = time.time()
    train, test = load_eval_sets(args.data, encoder.cfg.input_size, args.data_root, args.max_train, args.max_test)
    res = evaluate(encoder, train, test, k=args.k, probe=not args.no_probe)
    res["settings"] = {"encoder": str(args.encoder), "data": args.data, "k": args.k, "n_train": len(train),
                       "n_test": len(test), "seconds": round(time.time() - t0, 1)}
    cols = [c for c in ("raw_pixels", "random_init", "trained") if c in res]
    print(f"{'metric':<14}" + "".join(f"{c:>14}" for c in cols))
    for metric in ("knn", "probe"):
        if metric in res["trained"]:
            name = f"kNN@{args.k}" if metric == "knn" else "linear probe"
            print(f"{name:<14}" + "".join(f"{res[c][metric]:>14.4f}" for c in cols))
    print(f"({len(train)} reference / {len(test)} test images, {res['settings']['seconds']} s)")
    if args.json:
        atomic_write_json(args.json, res)
    return 0
