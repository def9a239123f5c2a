"""The one evaluation path as users meet it: ``byol eval``, ``byol probe fit`` and the retrain gate.

All three read their labelled splits with ``serving.contract.splits.labelled_splits`` and score vectors with
``index.metrics.score``; they differ only in where the vectors come from (PyTorch ``encoder.pt`` or a bundle through
ONNX Runtime) and in what they keep (a table, saved classifiers, an accept/reject verdict). Same encoder and data →
the same numbers, whichever command prints them.

``byol eval``'s baselines (raw pixels, the random-init encoder) are computed once per data and architecture and
kept under ``$BYOL_HOME/cache/baselines/``: they do not change with the trained encoder, and they were two thirds
of the command's time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index import metrics, probe
from serving import paths
from serving.contract.atomic import atomic_write_json
from serving.contract.encoder import OnnxEncoder
from serving.contract.sources import ImageSet
from serving.contract.splits import check_labelled, labelled_splits

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
        return {"protocol": "standard" if standard else "subset", "data": self.data, "data_root": self.data_root,
                "labels": self.labels, "n_train": n_train, "n_test": n_test, "k": [self.k, metrics.EXTRA_K],
                "temperature": metrics.DEFAULT_TEMPERATURE}


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
    baselines: bool = True  # raw pixels and (encoder.pt) the random-init encoder beside the trained one
    cache: bool = True  # reuse baselines scored before on the same splits, protocol and architecture


BASELINE_CACHE_VERSION = 1  # bump when index.metrics scores differently: older cached baselines are then ignored
RANDOM_INIT_VERSION = 1  # bump when training.eval.random_init_like or its BatchNorm calibration changes
RANDOM_INIT_SEED = 0


def baselines_dir() -> Path:
    return paths.home() / "cache" / "baselines"


def splits_fingerprint(train: ImageSet, test: ImageSet) -> str:
    """sha256 of both splits' pixels and labels (dtype and shape included): ~0.1 s for Fashion-MNIST's 70,000
    images, against up to a minute to score a baseline again."""
    h = hashlib.sha256()
    for a in (train.images, train.labels, test.images, test.labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{list(a.shape)};".encode())
        h.update(a.data)
    return h.hexdigest()


def baseline_identity(cfg: EvalConfig, train: ImageSet, test: ImageSet) -> dict:
    """What a baseline's scores depend on besides its own embedding: the splits and every protocol setting."""
    return {"version": BASELINE_CACHE_VERSION, "splits": splits_fingerprint(train, test), "n_train": len(train),
            "n_test": len(test), "k": cfg.k, "extra_k": [metrics.EXTRA_K], "temperature": metrics.DEFAULT_TEMPERATURE,
            "probe": cfg.probe, "l2": probe.DEFAULT_L2, "probe_gtol": probe.GTOL}


def random_init_identity(encoder, device) -> dict:
    """What the random-init twin depends on: the trained encoder's architecture (not its weights), the seed, the
    code that builds and calibrates it, and where it runs (torch version, device type)."""
    import torch

    return {"encoder": encoder.cfg.to_dict(), "seed": RANDOM_INIT_SEED, "random_init_version": RANDOM_INIT_VERSION,
            "torch": torch.__version__, "device": torch.device(device).type}


def _read_cached(path: Path, identity: dict) -> dict | None:
    """The cached scores at ``path`` when they are there, readable and about ``identity``; None otherwise (a torn,
    corrupt or foreign file is scored again, never an error)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(cached, dict) and cached.get("identity") == identity and isinstance(cached.get("scores"), dict)
    return cached["scores"] if ok and "knn" in cached["scores"] else None


def cached_baseline(name: str, identity: dict, compute, use_cache: bool = True) -> tuple[dict, str]:
    """``(Scores.as_dict(), "cached" | "computed")`` of baseline ``name``: read from the cache under the sha256 of
    ``identity``, else ``compute()``d and written there atomically (a cache that cannot be written is logged)."""
    text = json.dumps({"baseline": name, **identity}, sort_keys=True)
    identity = json.loads(text)  # as it reads back (tuples become lists), to compare with a cached file's
    path = baselines_dir() / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    scores = _read_cached(path, identity) if use_cache else None
    if scores is not None:
        log.info("%s baseline from the cache (%s)", name, path)
        return scores, "cached"
    scores = compute()
    if use_cache:
        try:
            atomic_write_json(path, {"identity": identity, "scores": scores})
        except OSError as exc:
            log.warning("could not cache the %s baseline at %s: %s", name, path, exc)
    return scores, "computed"


def evaluate(cfg: EvalConfig, keep: dict | None = None) -> dict:
    """Trained vs random-init (``encoder.pt`` only, BatchNorm calibrated on training images) vs raw pixels:
    ``{name: index.metrics.Scores.as_dict(), "settings": {...}}``; ``keep`` receives the trained encoder's fitted
    classifiers (``index.metrics.evaluate``). The baselines come from the cache when they were scored before
    (``settings["baselines"]`` says which were)."""
    if (cfg.encoder is None) == (cfg.model is None):
        raise ValueError("give either --encoder (a training run's encoder.pt) or --model (a bundle tag)")
    t0 = time.time()
    random_init = None  # (make its embedder, its identity): the random-init twin is built only when not cached
    if cfg.encoder is not None:
        from training.artifact import load_encoder
        from training.distributed import DistInfo, local_device
        from training.eval import embedder, random_init_like

        encoder, _ = load_encoder(cfg.encoder)
        device = local_device(cfg.device, DistInfo())
        encoder.to(device)
        train, test = cfg.splits(encoder.cfg.input_size)
        embedders = {"trained": embedder(encoder)}
        random_init = (lambda: embedder(random_init_like(encoder, seed=RANDOM_INIT_SEED,
                                                             calibrate_on=train.images)),
                       random_init_identity(encoder, device))
    else:
        from clients.workflows.indexing import open_encoder

        onnx = open_encoder(cfg.model)
        train, test = cfg.splits(onnx.input_size)
        embedders = {"trained": onnx_embedder(onnx)}
    splits = (train.images, train.labels, test.images, test.labels)

    def scored(name: str, embed=None) -> dict:
        """``Scores.as_dict()`` of a baseline, scored like the trained encoder (raw pixels when no ``embed``)."""
        return metrics.evaluate({name: embed} if embed else {}, *splits, k=cfg.k, probe=cfg.probe,
                                raw_pixels=embed is None)[name]

    report = metrics.evaluate(embedders, *splits, k=cfg.k, probe=cfg.probe, raw_pixels=False, keep=keep)
    sources: dict[str, str] = {}
    if cfg.baselines:
        identity = baseline_identity(cfg, train, test)
        if random_init is not None:
            make, extra = random_init
            report["random_init"], sources["random_init"] = cached_baseline(
                "random_init", {**identity, **extra}, lambda: scored("random_init", make()), cfg.cache)
        report["raw_pixels"], sources["raw_pixels"] = cached_baseline(
            "raw_pixels", identity, lambda: scored("raw_pixels"), cfg.cache)
    report["settings"] = {"encoder": cfg.encoder or cfg.model, **cfg.protocol(len(train), len(test)),
                          "baselines": sources, "seconds": round(time.time() - t0, 1)}
    return report


# ---------------------------------------------------------------------------------------------- byol probe fit
@dataclass
class ProbeConfig(SplitConfig):
    """``byol probe fit``: classifiers for a bundle version, saved beside it."""

    model: str = "latest"
    batch: int = 256
    warm_start: object = None  # an index.probe.LinearProbe of the same encoder (the demo's eval): fewer iterations


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


def raw_pixel_knn(cfg: SplitConfig, train: ImageSet, test: ImageSet, classes: list[str]) -> dict:
    """The kNN floor beside a probe report: the raw-pixel baseline ``byol eval`` cached for the same splits (its
    kNN figures are the same with or without the probe), else the pixels' kNN scored now (a pixel probe is slow)."""
    identity = baseline_identity(EvalConfig(k=cfg.k, probe=True, model="-"), train, test)
    text = json.dumps({"baseline": "raw_pixels", **identity}, sort_keys=True)
    cached = _read_cached(baselines_dir() / f"{hashlib.sha256(text.encode()).hexdigest()}.json", json.loads(text))
    if cached is not None:
        knn = {k: v for k, v in cached.items() if not k.startswith("probe")}
        return {**knn, "se": {k: v for k, v in knn.get("se", {}).items() if k != "probe"}}
    return metrics.score(metrics.pixel_features(train.images), train.labels, metrics.pixel_features(test.images),
                         test.labels, classes, k=cfg.k, probe=False).as_dict()


def fit_probe(cfg: ProbeConfig) -> dict:
    """Fit a linear probe + kNN classifier on a bundle's vectors, save both (tagged with the version), report
    their held-out accuracy beside raw pixels, from the same :func:`index.metrics.score` as everything else."""
    from clients.workflows.indexing import open_encoder

    encoder = open_encoder(cfg.model)
    train, test = cfg.splits(encoder.input_size)
    classes = train.classes or [str(i) for i in range(int(train.labels.max()) + 1)]
    embed = onnx_embedder(encoder, cfg.batch)
    trained = metrics.score(embed(train.images), train.labels, embed(test.images), test.labels, classes, k=cfg.k,
                            encoder_version=encoder.version, probe_init=cfg.warm_start)
    pixels = raw_pixel_knn(cfg, train, test, classes)
    out = paths.probe_dir(encoder.version)
    trained.probe_model.save(out)
    trained.knn_model.save(out)
    report = {"encoder_version": encoder.version, **cfg.protocol(len(train), len(test)), "classes": classes,
              "accuracy": {"linear_probe": trained.probe, "knn": trained.knn, "raw_pixel_knn": pixels["knn"]},
              "evaluation": {"trained": trained.as_dict(), "raw_pixels": pixels},
              "random_init": random_init_figures(encoder.manifest.metrics), "path": str(out)}
    atomic_write_json(out / REPORT_FILE, report)
    return report


# ---------------------------------------------------------------------------------------------- retrain gates
# Two gates, one report shape (``gate``: which ran, both encoders' figures, ``thresholds``, ``accepted``, ``reasons``):
# with labels the user gives (``--eval-data``: a data set, a labelled folder, a path,label CSV), and without — the
# default — health figures on a fixed sample of the user's own images. Never Fashion-MNIST unless asked for.
@dataclass
class GateConfig(SplitConfig):
    """The labelled gate: both bundles scored on one fixed labelled set (a data set's own splits, or a seeded 80/20
    split of a labelled folder / ``path,label`` CSV); rejected when kNN or probe accuracy is lower than the current
    encoder's by more than ``tolerance``."""

    tolerance: float = 0.01

    def check(self) -> None:
        """Fail before any training when the labelled data cannot work (one clear error naming it)."""
        check_labelled(self.data, self.labels, self.data_root)


def failed_training(bundle_dir: Path) -> list[str]:
    """Both gates' first check: a candidate whose training run diverged or collapsed (its manifest's metrics) is
    rejected whatever its figures (``serving.contract.health``)."""
    from serving.contract.bundle import read_bundle
    from serving.contract.health import problems

    return [f"training failed: {p}" for p in problems(read_bundle(bundle_dir)[1].metrics)]


def gate(candidate_dir: Path, current_dir: Path, cfg: GateConfig) -> dict:
    """kNN and linear-probe accuracy of both bundles through ONNX Runtime on the same pixels; the verdict."""
    report: dict = {"gate": "labelled", "eval_data": cfg.labels or cfg.data, "tolerance": cfg.tolerance,
                    "thresholds": {"tolerance": cfg.tolerance}}
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
    reasons = failed_training(candidate_dir) + [f"{m} {cand[m]:.4f} < {cur[m]:.4f} - {cfg.tolerance}"
                                                for m in ("knn", "probe") if cand[m] < cur[m] - cfg.tolerance]
    report["accepted"], report["reasons"] = not reasons, reasons
    return report


@dataclass
class LabelFreeGateConfig:
    """The gate for a user's data without labels: a fixed seeded sample of their images, health figures of both
    encoders (``index.metrics.label_free`` + neighbour agreement), and thresholds relative to the current encoder.

    A candidate is rejected when it is collapsing (embedding std or effective rank below ``min_ratio`` × the
    current's), when its vectors crowd together (uniformity above ``max_uniformity_ratio`` × the current's — both
    are negative, 0 means collapsed), when views of one image drift apart (alignment above ``max_alignment_ratio``
    × the current's + ``alignment_slack``), or when it keeps almost none of the current encoder's neighbourhoods
    (agreement of the 10 nearest neighbours below ``min_agreement``; two unrelated embeddings share ~10/N of them).
    The ratios are loose on purpose: a retrain is meant to change the encoder; the gate stops a broken one.
    """

    sample: int = 1000
    seed: int = 0
    min_ratio: float = 0.5
    max_uniformity_ratio: float = 0.5
    max_alignment_ratio: float = 2.0
    alignment_slack: float = 0.05
    min_agreement: float = 0.1

    MIN_IMAGES = 20  # fewer readable images make every figure noise


def second_view(img, size: int, rng: np.random.Generator) -> np.ndarray:
    """A second view of a decoded image (PIL): a random-resized crop (30–100 % of the area) and a coin-flip mirror,
    at ``size`` — enough to see whether an encoder keeps views of one image together, torch-free."""
    from PIL import Image, ImageOps

    w, h = img.size
    scale, ratio = rng.uniform(0.3, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, np.sqrt(scale * w * h * ratio)), min(h, np.sqrt(scale * w * h / ratio))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    view = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return np.asarray(ImageOps.mirror(view) if rng.random() < 0.5 else view)


def second_views(images: list, size: int, seed: int = 0) -> np.ndarray:
    """:func:`second_view` of each image, seeded: the same images and seed give the same views."""
    rng = np.random.default_rng(seed)
    return np.stack([second_view(img, size, rng) for img in images]) if images else np.zeros((0, size, size, 3),
                                                                                             np.uint8)


ProbeItem = Path | np.ndarray  # an image file, or decoded uint8 [H, W, 3] pixels (a data set's item)


def _probe_pixels(items: Sequence[ProbeItem], sizes: set[int], seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each readable item → (model input, second view) at every input size, decoded one at a time (full-resolution
    photos never pile up in memory); unreadable files are counted and skipped."""
    from PIL import Image

    from serving.contract.image import ImageError, decode, fit

    firsts: dict[int, list] = {s: [] for s in sizes}
    views: dict[int, list] = {s: [] for s in sizes}
    rngs = {s: np.random.default_rng(seed) for s in sizes}
    skipped = 0
    for item in items:
        try:
            img = Image.fromarray(item) if isinstance(item, np.ndarray) else decode(Path(item).read_bytes())
        except (ImageError, OSError):
            skipped += 1
            continue
        for s in sizes:
            firsts[s].append(fit(img, s))
            views[s].append(second_view(img, s, rngs[s]))
    if skipped:
        log.info("label-free gate: %d unreadable probe image(s) skipped", skipped)
    return {s: (np.stack(firsts[s]), np.stack(views[s])) for s in sizes if firsts[s]}


def label_free_gate(candidate_dir: Path, current_dir: Path, images: Sequence[ProbeItem], cfg: LabelFreeGateConfig,
                    source: str = "") -> dict:
    """Health of both bundles on the same seeded sample (``cfg.sample``) of ``images`` — the user's files or
    decoded pixels — and the verdict (see :class:`LabelFreeGateConfig`). ``source`` says, for the report, where
    the images came from."""
    rng = np.random.default_rng(cfg.seed)
    picked = [images[i] for i in np.sort(rng.permutation(len(images))[: cfg.sample])]
    encoders = {"current": OnnxEncoder(current_dir), "candidate": OnnxEncoder(candidate_dir)}
    pixels = _probe_pixels(picked, {e.input_size for e in encoders.values()}, cfg.seed)
    n = len(next(iter(pixels.values()))[0]) if pixels else 0
    if n < cfg.MIN_IMAGES:
        raise ValueError(f"the label-free gate needs at least {cfg.MIN_IMAGES} readable images, found {n} "
                         f"(give more new images, or labelled data with --eval-data)")
    report: dict = {"gate": "label-free", "n_images": n, "sample_from": source or f"{len(images)} images",
                    "thresholds": {k: v for k, v in vars(cfg).items()}}
    vectors = {}
    for name, enc in encoders.items():
        x, views = pixels[enc.input_size]
        vectors[name] = enc.embed_many(x)
        report[name] = {"version": enc.version, **metrics.label_free(vectors[name], enc.embed_many(views))}
    cur, cand = report["current"], report["candidate"]
    cand["neighbour_agreement"] = metrics.neighbour_agreement(vectors["current"], vectors["candidate"])
    checks = [
        ("embedding_std", cand["embedding_std"] >= cfg.min_ratio * cur["embedding_std"]),
        ("effective_rank", cand["effective_rank"] >= cfg.min_ratio * cur["effective_rank"]),
        ("uniformity", cand["uniformity"] <= cfg.max_uniformity_ratio * cur["uniformity"]),
        ("alignment", cand["alignment"] <= cfg.max_alignment_ratio * cur["alignment"] + cfg.alignment_slack),
        ("neighbour_agreement", cand["neighbour_agreement"] >= cfg.min_agreement),
    ]
    report["reasons"] = failed_training(candidate_dir) + [
        f"{name}: candidate {cand[name]:.4g} vs current {cur.get(name, float('nan')):.4g}" for name, ok in checks
        if not ok]
    report["accepted"] = not report["reasons"]
    return report
