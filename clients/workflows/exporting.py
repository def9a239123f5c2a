"""``byol export``: encoder file → parity-checked ONNX bundle → BentoML model store (+ the state retrain resumes).

Training never imports BentoML; this workflow is where its bundle meets the model store.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from serving.contract.sources import SourceError, dataset_name, iter_image_files, load_source, read_files

log = logging.getLogger(__name__)

DEFAULT_PARITY_N = 64


@dataclass
class ExportConfig:
    encoder: Path
    parity_data: str | None = None  # fashion-mnist, cifar10 or a folder (default: fashion-mnist when installed)
    data_root: str | None = None
    parity_n: int = DEFAULT_PARITY_N
    out: Path | None = None  # keep the bundle in this new directory
    register: bool = True
    fp16: bool = False
    int8: bool = False  # also encoder_int8.onnx (static int8, calibrated on the parity images): opt-in, it is no
    # longer within 1e-4 of PyTorch (measured max |diff| ~2e-2, kNN@20 unchanged within its standard error)
    atol: float = 1e-4
    min_cosine: float = 0.9999


def parity_inputs(spec: str | None, data_root: str | None, n: int, size: int) -> dict:
    """``export_bundle`` keyword arguments for the parity images: dataset arrays or decodable files of a folder."""
    if n < 1:
        raise ValueError(f"--parity-n must be at least 1, got {n}")
    if spec is None:
        try:
            return {"parity_images": load_source("fashion-mnist", "test", data_root=data_root).images[:n]}
        except SourceError:
            log.warning("Fashion-MNIST not found: parity is checked on synthetic images (pass --parity-data)")
            return {}
    if dataset_name(spec):
        return {"parity_images": load_source(spec, "test", data_root=data_root).images[:n]}
    images, files = read_files(iter_image_files(spec), size, limit=n)
    if images.skipped:
        log.warning("parity: skipped %d unreadable file(s) under %s", images.skipped, spec)
    if not files:
        raise SourceError(f"no readable image files under {spec} for the parity check")
    return {"parity_files": files}


def trained_folder(meta: dict) -> str | None:
    """The folder the encoder was trained on, when it still exists: its images are the natural parity check (a
    folder-trained encoder checked on Fashion-MNIST would prove parity on pixels it never serves)."""
    source = ((meta.get("config") or {}).get("data") or {}).get("source")
    return source if source and not dataset_name(source) and Path(source).is_dir() else None


def with_eval_report(meta: dict, eval_file: Path) -> dict:
    """Carry ``byol eval``'s report (trained vs random-init vs raw pixels), when the run has one, into the
    manifest's metrics: the bundle then says how good it is, and ``byol probe fit`` prints the random-init
    baseline beside its own figures."""
    if not eval_file.is_file():
        return meta
    try:
        report = json.loads(eval_file.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring unreadable %s", eval_file)
        return meta
    return {**meta, "metrics": {**(meta.get("metrics") or {}), "eval": report}}


def keep_training_state(meta: dict, version: str) -> Path | None:
    """Copy the run's full BYOL state next to the registered version, so ``byol retrain`` can resume it later
    even after the run directory is gone (written atomically; the bundle itself stays torch-free)."""
    from serving.contract.atomic import atomic_write
    from serving.paths import checkpoint_file

    src = Path(meta.get("checkpoint") or "")
    if not src.is_file():
        log.warning("no training checkpoint recorded for this encoder: %s cannot be retrained", version)
        return None
    target = checkpoint_file(version)
    if not target.is_file():
        atomic_write(target, lambda tmp: shutil.copyfile(src, tmp))
    return target


def refuse_failed_run(encoder_file: Path, meta: dict) -> None:
    """A run that diverged or collapsed is never exported (``serving.contract.health``): its encoder's own metrics,
    or its run directory's summary when a later session of the run failed after the encoder was written."""
    from serving.contract.health import problems, run_dir_problems

    found = problems(meta.get("metrics")) + run_dir_problems(encoder_file)
    if found:
        raise ValueError(f"refusing to export {encoder_file}: its training run failed ({found[0]}); train it again "
                         f"with the change the message suggests")


def export(cfg: ExportConfig) -> dict:
    """Export, check parity, register (unless told not to); returns the manifest, the tag and the bundle path."""
    if not cfg.register and cfg.out is None:
        raise ValueError("--no-register needs --out (otherwise the bundle would be thrown away)")
    if cfg.out is not None and cfg.out.exists():
        raise FileExistsError(f"--out {cfg.out} already exists (bundles are immutable; pick a new directory)")
    from training.artifact import load_encoder
    from training.export import export_bundle, export_to_temp

    encoder, meta = load_encoder(cfg.encoder)
    refuse_failed_run(cfg.encoder, meta)
    meta = with_eval_report(meta, Path(cfg.encoder).parent / "eval.json")
    kwargs = dict(meta=meta, fp16=cfg.fp16, int8=cfg.int8, atol=cfg.atol, min_cosine=cfg.min_cosine,
                  **parity_inputs(cfg.parity_data or trained_folder(meta), cfg.data_root, cfg.parity_n,
                                  encoder.cfg.input_size))
    if cfg.out is not None:
        out, manifest = cfg.out, export_bundle(encoder, cfg.out, **kwargs)
    else:
        out, manifest = export_to_temp(encoder, **kwargs)
    try:
        tag = None
        if cfg.register:
            from serving.store import register_bundle

            tag = register_bundle(out)
            keep_training_state(meta, manifest.version)
    finally:
        if cfg.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    return {"manifest": manifest, "tag": tag, "bundle": cfg.out}
