"""``byol retrain``: continue BYOL from the served bundle's training state on old + new images, then export,
gate, re-index, promote — each stage writing only new, version-keyed files, so a crash at any point leaves the
served encoder and index untouched and the next run picks up where this one stopped.

Safe from cron / a systemd timer: a lock keeps two runs apart, and no new images means a clean exit.

The gate judges the candidate on the user's own data: with labels when given (``GateConfig``: a labelled folder, a
``path,label`` CSV or a named data set), else — the default — the label-free gate on a fixed seeded sample of the
user's images (the new ones plus a seeded sample of those the parent was trained on). Fashion-MNIST is used only
when asked for. Labelled data is checked before training starts, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.workflows.evaluation import GateConfig, LabelFreeGateConfig
from serving.contract.sources import ImageSet, dataset_name, iter_image_files, load_source, read_files
from serving.paths import checkpoint_file, probe_dir, reports_dir, retrain_dir

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """Retraining cannot proceed; the message says what is missing."""


@dataclass
class RetrainConfig:
    new_data: list[str]
    parent: str | None = None  # bundle version to continue from (default: the served one)
    replay: float = 1.0  # old images replayed per new image
    steps: int = 300
    minutes: float | None = None
    overrides: list[str] = field(default_factory=list)
    gate: GateConfig | None = None  # the labelled gate (--eval-data); None: the label-free gate on the user's images
    label_free: LabelFreeGateConfig = field(default_factory=LabelFreeGateConfig)
    data_root: str | None = None  # where the parent's training data set lives, when not where training found it
    promote: bool = True
    url: str | None = None
    token: str | None = None


# ---------------------------------------------------------------------------------------------- new images
def _seen_file() -> Path:
    return retrain_dir() / "seen.json"


def load_seen() -> set[str]:
    path = _seen_file()
    return set(json.loads(path.read_text())) if path.is_file() else set()


def mark_seen(digests: set[str]) -> None:
    from serving.contract.atomic import atomic_write_json

    atomic_write_json(_seen_file(), sorted(load_seen() | digests))


def find_new_images(dirs: list[str], seen: set[str]) -> list[tuple[Path, str]]:
    """Image files under ``dirs`` whose content (sha256) no earlier retrain has used."""
    out, digests = [], set()
    for d in dirs:
        for path in iter_image_files(d):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen and digest not in digests:
                digests.add(digest)
                out.append((path, digest))
    return out


# ---------------------------------------------------------------------------------------------- the run
def retrain(cfg: RetrainConfig) -> dict:
    """One retrain under the lock → ``{"status": locked|no-new-images|rejected|registered|promoted, ...}``."""
    from filelock import FileLock, Timeout

    if cfg.gate is not None:
        cfg.gate.check()  # bad labelled data fails now, not after the training stage
    retrain_dir().mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(retrain_dir() / "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return {"status": "locked", "lock": str(lock.lock_file)}
    try:
        return _retrain(cfg)
    finally:
        lock.release()


def _retrain(cfg: RetrainConfig) -> dict:
    from serving.contract.bundle import read_bundle
    from serving.release import current_version
    from serving.store import bundle_path

    _, parent = read_bundle(bundle_path((cfg.parent or current_version() or "latest").split(":", 1)[-1]))
    ckpt = checkpoint_file(parent.version)
    if not ckpt.is_file():
        raise RetrainError(f"no training checkpoint for bundle {parent.version} at {ckpt}: export it with "
                           "'byol export' from a training run so retrain can resume it")
    new = find_new_images(cfg.new_data, load_seen())
    if not new:
        return {"status": "no-new-images", "dirs": cfg.new_data}
    new_fp = hashlib.sha256("".join(sorted(d for _, d in new)).encode()).hexdigest()
    run_dir = retrain_dir() / "runs" / f"{parent.version}-{new_fp[:12]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("retraining %s on %d new image(s) → %s", parent.version, len(new), run_dir)
    from training.errors import RunFailed

    try:
        candidate = _candidate(cfg, parent, ckpt, [p for p, _ in new], run_dir)
    except RunFailed as exc:  # nothing was exported; the images stay new, for a retry with other settings
        log.error("retrain: the candidate's training failed: %s", exc)
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"status": "rejected", "parent": parent.version, "new_images": len(new),
                "gate": {"gate": "training", "accepted": False, "reasons": [f"training failed: {exc}"]}}
    result = {"parent": parent.version, "new_images": len(new), **candidate}
    if not candidate["gate"]["accepted"]:
        result["status"] = "rejected"
    elif not cfg.promote:
        result["status"] = "registered"
    else:
        _publish(cfg, candidate["version"], parent.version, len(new))
        result["status"] = "promoted"
    mark_seen({d for _, d in new})
    return result


def _publish(cfg: RetrainConfig, version: str, parent: str, n_new: int) -> None:
    """Index the collection and refit the probe (when the parent had one) for ``version``, then promote it.

    Resumable: an index published by an earlier run that was killed afterwards is complete (publishing is atomic),
    so it is kept, not built again (a second build would be refused); what was added since is reconciled into it
    when a server loads it. The probe is refitted (cheap, and written whole or not at all).
    """
    from clients.workflows import indexing, release
    from clients.workflows.evaluation import fit_probe
    from index.durable import DurableIndex
    from serving.paths import index_dir

    stages = []
    if DurableIndex.exists(index_dir(version)):
        log.info("the index of %s was built by an earlier, interrupted run: kept", version)
    else:
        stages.append(("index build", lambda: indexing.build(indexing.BuildConfig(
            model=version, from_collection=True, progress=False))))
    if probe_dir(parent).exists():
        probe_cfg = _probe_config(cfg, parent, version)
        if probe_cfg is None:
            log.warning("the probe of %s is not refitted for %s: its report does not say which labelled data it "
                        "was fitted on; run 'byol probe fit --model %s'", parent, version, version)
        else:
            stages.append(("probe fit", lambda: fit_probe(probe_cfg)))
    for name, run in stages:
        try:
            run()
        except Exception as exc:
            raise RetrainError(f"{name} failed: {exc}; {version} stays registered, unpromoted") from exc
    release.promote(version, cfg.url, cfg.token, reason=f"retrain of {parent} on {n_new} new images")


def _probe_config(cfg: RetrainConfig, parent: str, version: str):
    """The parent's probe, refitted for ``version`` on the labelled data its report names (same subset sizes), else
    on the labelled gate's data; None when neither says which labelled data (an older install, no --eval-data)."""
    from clients.workflows.evaluation import REPORT_FILE, ProbeConfig

    try:
        rep = json.loads((probe_dir(parent) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        rep = {}
    if rep.get("data"):
        subset = rep.get("protocol") == "subset"
        return ProbeConfig(model=version, data=rep["data"], data_root=rep.get("data_root") or cfg.data_root,
                           labels=rep.get("labels"), max_train=rep.get("n_train") if subset else None,
                           max_test=rep.get("n_test") if subset else None)
    g = cfg.gate
    if g is None:
        return None
    return ProbeConfig(model=version, data=g.data, data_root=g.data_root, labels=g.labels, max_train=g.max_train,
                       max_test=g.max_test)


def _old_images(train_cfg, n: int, data_root: str | None, size: int | None) -> ImageSet:
    """A seeded sample of ``n`` of the images the parent was trained on (the same ``n`` give the same images),
    at ``size`` (``None``: as stored); from a folder only the sampled files are read."""
    src = train_cfg.data.source
    if dataset_name(src):
        old = load_source(src, "train", size=size, data_root=data_root or train_cfg.data.data_root)
        return old.subset(np.sort(np.random.default_rng(train_cfg.train.seed).permutation(len(old))[:n]))
    images, _ = read_files(_old_files(train_cfg, n), size or train_cfg.encoder.input_size)
    return images


def _old_files(train_cfg, n: int) -> list[Path]:
    """The seeded sample of :func:`_old_images` from a folder, as files (the gate reads them at full resolution)."""
    files = list(iter_image_files(train_cfg.data.source))
    return [files[i] for i in np.sort(np.random.default_rng(train_cfg.train.seed).permutation(len(files))[:n])]


def _probe_pool(cfg: RetrainConfig, train_cfg, files: list[Path]) -> tuple[list, str]:
    """The label-free gate's images: every new file plus a fixed seeded sample of the parent's training images
    (files of a folder, pixels of a data set) — the user's own images, never a stand-in data set."""
    n_old = cfg.label_free.sample
    try:
        if dataset_name(train_cfg.data.source):
            old: list = list(_old_images(train_cfg, n_old, cfg.data_root, None).images)
        else:
            old = _old_files(train_cfg, n_old)
    except (ValueError, OSError) as exc:
        log.warning("label-free gate: the parent's training images are not readable (%s); new images only", exc)
        old = []
    return [*files, *old], f"{len(files)} new + {len(old)} earlier images"


def _training_mix(cfg: RetrainConfig, train_cfg, files: list[Path]) -> tuple[ImageSet, int]:
    """New images plus ``replay`` × as many old ones (seeded), at the encoder's size; and how many new ones."""
    size = train_cfg.encoder.input_size
    new_set, _ = read_files(files, size)
    if not len(new_set):
        raise RetrainError(f"none of the {len(files)} new files could be read as images")
    parts = [new_set.images]
    n_old = int(round(cfg.replay * len(new_set)))
    if n_old:
        parts.append(_old_images(train_cfg, n_old, cfg.data_root, size).images)
    mix = ImageSet(np.concatenate(parts))
    log.info("training mix: %d new + %d replayed old images (%d unreadable skipped)", len(new_set),
             len(mix) - len(new_set), new_set.skipped)
    return mix, len(new_set)


def _candidate(cfg: RetrainConfig, parent, ckpt: Path, files: list[Path], run_dir: Path) -> dict:
    """Train → export → gate → register, once per (parent, new images): a rerun reuses finished stages."""
    done = run_dir / "candidate.json"
    if done.is_file():
        log.info("reusing the candidate of an earlier, interrupted run (%s)", done)
        return json.loads(done.read_text())
    from training.config import TrainConfig, apply_overrides
    from training.train import train

    train_cfg = apply_overrides(TrainConfig.from_dict(parent.training_config),
                                [f"train.steps={cfg.steps}", "train.epochs=None", f"train.max_minutes={cfg.minutes}",
                                 *cfg.overrides])
    mix, n_new = _training_mix(cfg, train_cfg, files)
    resume = (run_dir / "checkpoint.pt").is_file() and not (run_dir / "encoder.pt").is_file()
    if not (run_dir / "encoder.pt").is_file():
        train(train_cfg, run_dir, resume=resume, data=mix, init_from=None if resume else ckpt)
    candidate = _register(cfg, parent, run_dir, mix, n_new, lambda: _probe_pool(cfg, train_cfg, files))
    from serving.contract.atomic import atomic_write_json

    atomic_write_json(done, candidate)
    shutil.rmtree(run_dir / "bundle", ignore_errors=True)  # registered: the store holds it now
    return candidate


def _register(cfg: RetrainConfig, parent, run_dir: Path, mix: ImageSet, n_new: int,
              probe: Callable[[], tuple[list, str]]) -> dict:
    """Export the run's encoder, gate it against the parent, register it (accepted or not) with its report.

    Resumable: the bundle is exported into the run directory (atomically) and its gate report kept beside it, so a
    rerun after a kill registers that same version (registering is idempotent) instead of exporting a new one.
    """
    from clients.workflows.evaluation import gate, label_free_gate
    from serving.contract.atomic import atomic_write, atomic_write_json
    from serving.contract.bundle import BundleError, read_bundle
    from serving.store import bundle_path, register_bundle

    bundle = run_dir / "bundle"
    try:
        _, manifest = read_bundle(bundle)
        log.info("reusing the bundle %s exported by an earlier, interrupted run", manifest.version)
    except BundleError:
        shutil.rmtree(bundle, ignore_errors=True)
        manifest = _export(parent, run_dir, bundle, mix, n_new)
    report_file = bundle / "gate_report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
    elif cfg.gate is not None:
        report = gate(bundle, bundle_path(parent.version), cfg.gate)
        atomic_write_json(report_file, report)
    else:
        items, source = probe()
        report = label_free_gate(bundle, bundle_path(parent.version), items, cfg.label_free, source)
        atomic_write_json(report_file, report)
    read_bundle(bundle)
    tag = register_bundle(bundle)
    atomic_write_json(reports_dir() / f"{manifest.version}.json", report)
    atomic_write(checkpoint_file(manifest.version), lambda tmp: shutil.copyfile(run_dir / "checkpoint.pt", tmp))
    return {"version": manifest.version, "tag": tag, "gate": report}


def _export(parent, run_dir: Path, bundle: Path, mix: ImageSet, n_new: int):
    """Export with the parity check run on the user's own images: 16 spread over the training mix (new + old)."""
    from training.artifact import load_encoder
    from training.export import export_bundle

    encoder, meta = load_encoder(run_dir / "encoder.pt")
    meta = dict(meta, data_fingerprint=mix.fingerprint(), parent_version=parent.version)
    meta.setdefault("metrics", {})["new_images"] = n_new
    parity = mix.images[np.unique(np.linspace(0, len(mix) - 1, 16).astype(int))]
    return export_bundle(encoder, bundle, meta=meta, parity_images=parity, parent_version=parent.version)
