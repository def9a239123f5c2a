"""The one evaluation path as users meet it: ``byol eval``, ``byol probe fit`` and the retrain gate.

All three read their labelled splits with ``serving.contract.splits.labelled_splits`` and score vectors with
``index.metrics.score``; they differ only in where the vectors come from (PyTorch ``encoder.pt`` or a bundle through
ONNX Runtime) and in what they keep (a table, saved classifiers, an accept/reject verdict). Same encoder and data →
the same numbers, whichever command prints them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from index import metrics
from serving import paths
from serving.contract.atomic import atomic_write_json
from serving.contract.encoder import OnnxEncoder
from serving.contract.sources import ImageSet
from serving.contract.splits import labelled_splits

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass
class SplitConfig:
    """Which labelled images: a data set's own splits, or a seeded 80/20 split of a labelled folder / CSV.

    The standard protocol uses all of both splits (``max_train`` / ``max_test`` None); seeded subsets are for
    tests and quick looks, and every report says how many images it scored.
    """

    data: str = "fashion-mnist"
    data_root: str | None = None
    labels: str | None = None  # CSV of path,label rows (a folder's labels)
    max_train: int | None = None
    max_test: int | None = None
    k: int = metrics.DEFAULT_K

    def splits(self, size: int) -> tuple[ImageSet, ImageSet]:
        return labelled_splits(self.data, size, self.data_root, self.labels, self.max_train, self.max_test)

    def protocol(self, n_train: int, n_test: int) -> dict:
        """What was measured, for the report: the standard protocol or a named subset of it."""
        standard = self.max_train is None and self.max_test is None
        return {"protocol": "standard" if standard else "subset", "data": self.data, "n_train": n_train,
                "n_test": n_test, "k": [self.k, metrics.EXTRA_K], "temperature": metrics.DEFAULT_TEMPERATURE}


def onnx_embedder(encoder: OnnxEncoder, batch: int = 256):
    """``images → vectors`` through ONNX Runtime: exactly what would be served."""
    return lambda images: encoder.embed_many(images, batch)


# ---------------------------------------------------------------------------------------------- byol eval
@dataclass
class EvalConfig(SplitConfig):
    """``byol eval``: an ``encoder.pt`` (PyTorch) or a registered bundle (``model``, ONNX Runtime)."""

    encoder: str | None = None
    model: str | None = None
    probe: bool = True
    device: str = "auto"


def evaluate(cfg: EvalConfig) -> dict:
    """Trained vs random-init (``encoder.pt`` only, BatchNorm calibrated on training images) vs raw pixels:
    ``{name: index.metrics.Scores.as_dict(), "settings": {...}}``."""
    if (cfg.encoder is None) == (cfg.model is None):
        raise ValueError("give either --encoder (a training run's encoder.pt) or --model (a bundle tag)")
    t0 = time.time()
    if cfg.encoder is not None:
        from training.artifact import load_encoder
        from training.distributed import DistInfo, local_device
        from training.eval import embedder, random_init_like

        encoder, _ = load_encoder(cfg.encoder)
        encoder.to(local_device(cfg.device, DistInfo()))
        train, test = cfg.splits(encoder.cfg.input_size)
        random_init = random_init_like(encoder, calibrate_on=train.images)
        embedders = {"trained": embedder(encoder), "random_init": embedder(random_init)}
    else:
        from clients.workflows.indexing import open_encoder

        onnx = open_encoder(cfg.model)
        train, test = cfg.splits(onnx.input_size)
        embedders = {"trained": onnx_embedder(onnx)}
    report = metrics.evaluate(embedders, train.images, train.labels, test.images, test.labels, k=cfg.k,
                              probe=cfg.probe)
    report["settings"] = {"encoder": cfg.encoder or cfg.model, **cfg.protocol(len(train), len(test)),
                          "seconds": round(time.time() - t0, 1)}
    return report


# ---------------------------------------------------------------------------------------------- byol probe fit
@dataclass
class ProbeConfig(SplitConfig):
    """``byol probe fit``: classifiers for a bundle version, saved beside it."""

    model: str = "latest"
    batch: int = 256


def random_init_figures(metrics_: dict) -> dict:
    """Whatever the export recorded under a ``random_init`` key (nested anywhere in the manifest metrics)."""
    if not isinstance(metrics_, dict):
        return {}
    if isinstance(metrics_.get("random_init"), dict):
        return metrics_["random_init"]
    for v in metrics_.values():
        found = random_init_figures(v)
        if found:
            return found
    return {}


def fit_probe(cfg: ProbeConfig) -> dict:
    """Fit a linear probe + kNN classifier on a bundle's vectors, save both (tagged with the version), report
    their held-out accuracy beside raw pixels, from the same :func:`index.metrics.score` as everything else."""
    from clients.workflows.indexing import open_encoder

    encoder = open_encoder(cfg.model)
    train, test = cfg.splits(encoder.input_size)
    classes = train.classes or [str(i) for i in range(int(train.labels.max()) + 1)]
    embed = onnx_embedder(encoder, cfg.batch)
    trained = metrics.score(embed(train.images), train.labels, embed(test.images), test.labels, classes, k=cfg.k,
                            encoder_version=encoder.version)
    pixels = metrics.score(metrics.pixel_features(train.images), train.labels,  # the kNN floor (a pixel probe
                           metrics.pixel_features(test.images), test.labels, classes, k=cfg.k, probe=False)  # is slow)
    out = paths.probe_dir(encoder.version)
    trained.probe_model.save(out)
    trained.knn_model.save(out)
    report = {"encoder_version": encoder.version, **cfg.protocol(len(train), len(test)), "classes": classes,
              "accuracy": {"linear_probe": trained.probe, "knn": trained.knn, "raw_pixel_knn": pixels.knn},
              "evaluation": {"trained": trained.as_dict(), "raw_pixels": pixels.as_dict()},
              "random_init": random_init_figures(encoder.manifest.metrics), "path": str(out)}
    atomic_write_json(out / REPORT_FILE, report)
    return report


# ---------------------------------------------------------------------------------------------- retrain gate
@dataclass
class GateConfig(SplitConfig):
    """The retrain gate: both bundles scored on one fixed labelled set; accept unless worse by > ``tolerance``."""

    tolerance: float = 0.01


def gate(candidate_dir: Path, current_dir: Path, cfg: GateConfig) -> dict:
    """kNN and linear-probe accuracy of both bundles through ONNX Runtime on the same pixels; the verdict."""
    report: dict = {"eval_data": cfg.data, "tolerance": cfg.tolerance}
    sets: dict[int, tuple] = {}  # input size → the (train, test) splits, read once for both bundles
    for name, bundle in (("current", current_dir), ("candidate", candidate_dir)):
        enc = OnnxEncoder(bundle)
        if enc.input_size not in sets:
            sets[enc.input_size] = cfg.splits(enc.input_size)
        train, test = sets[enc.input_size]
        embed = onnx_embedder(enc)
        scores = metrics.score(embed(train.images), train.labels, embed(test.images), test.labels, k=cfg.k)
        report[name] = {"version": enc.version, **scores.as_dict()}
        report["settings"] = cfg.protocol(len(train), len(test))
    cur, cand = report["current"], report["candidate"]
    reasons = [f"{m} {cand[m]:.4f} < {cur[m]:.4f} - {cfg.tolerance}" for m in ("knn", "probe")
               if cand[m] < cur[m] - cfg.tolerance]
    report["accepted"], report["reasons"] = not reasons, reasons
    return report
