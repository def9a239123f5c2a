"""``byol export``: encoder file → checked ONNX bundle → BentoML model store (training itself never imports bentoml)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PARITY_N = 64


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol export", description="Export f_θ to an ONNX bundle, check parity on "
                                "real images through the serving path, and register it in the model store.")
    p.add_argument("--encoder", required=True, type=Path, help="encoder file written by training (encoder.pt)")
    p.add_argument("--parity-data", default=None,
                   help="images for the parity check: fashion-mnist, cifar10 or a folder (default: fashion-mnist "
                        "when installed, else synthetic images)")
    p.add_argument("--data-root", default=None, help="dataset location for --parity-data fashion-mnist|cifar10")
    p.add_argument("--parity-n", type=int, default=DEFAULT_PARITY_N, help="how many parity images (default 64)")
    p.add_argument("--out", type=Path, default=None, help="keep the bundle in this new directory")
    p.add_argument("--no-register", action="store_true", help="do not register in the BentoML model store")
    p.add_argument("--fp16", action="store_true", help="also write encoder_fp16.onnx (GPU serving)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |ONNX - PyTorch| allowed (default 1e-4)")
    p.add_argument("--min-cosine", type=float, default=0.9999, help="min cosine ONNX vs PyTorch (default 0.9999)")
    return p


def parity_inputs(spec: str | None, data_root: str | None, n: int, size: int) -> dict:
    """``export_bundle`` keyword arguments for the parity images: dataset arrays or decodable files of a folder."""
    from serving.contract.image import ImageError, load
    from serving.contract.sources import SourceError, iter_image_files, load_source

    if n < 1:
        raise ValueError(f"--parity-n must be at least 1, got {n}")
    if spec is None:
        try:
            return {"parity_images": load_source("fashion-mnist", "test", data_root=data_root).images[:n]}
        except SourceError:
            log.warning("Fashion-MNIST not found: parity is checked on synthetic images (pass --parity-data)")
            return {}
    if spec.lower() in ("fashion-mnist", "fmnist", "fashion_mnist", "cifar10", "cifar-10"):
        return {"parity_images": load_source(spec, "test", data_root=data_root).images[:n]}
    files, skipped = [], 0
    for path in iter_image_files(spec):
        try:
            load(path.read_bytes(), size)
        except (ImageError, OSError) as exc:
            skipped += 1
            log.debug("parity: skipping %s: %s", path, exc)
            continue
        files.append(path)
        if len(files) == n:
            break
    if skipped:
        log.warning("parity: skipped %d unreadable file(s) under %s", skipped, spec)
    if not files:
        raise SourceError(f"no readable image files under {spec} for the parity check")
    return {"parity_files": files}


def with_eval_report(meta: dict, eval_file: Path) -> dict:
    """Carry ``byol eval``'s report (trained vs random-init vs raw pixels), when the run has one, into the
    manifest's metrics: the bundle then says how good it is, and ``byol probe fit`` prints the random-init
    baseline beside its own figures."""
    if not eval_file.is_file():
        return meta
    import json

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


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.no_register and args.out is None:
        raise ValueError("--no-register needs --out (otherwise the bundle would be thrown away)")
    if args.out is not None and args.out.exists():
        raise FileExistsError(f"--out {args.out} already exists (bundles are immutable; pick a new directory)")
    from training.artifact import load_encoder
    from training.export import export_bundle, export_to_temp

    encoder, meta = load_encoder(args.encoder)
    meta = with_eval_report(meta, args.encoder.parent / "eval.json")
    kwargs = dict(meta=meta, fp16=args.fp16, atol=args.atol, min_cosine=args.min_cosine,
                  **parity_inputs(args.parity_data, args.data_root, args.parity_n, encoder.cfg.input_size))
    if args.out is not None:
        out, manifest = args.out, export_bundle(encoder, args.out, **kwargs)
    else:
        out, manifest = export_to_temp(encoder, **kwargs)
    try:
        tag = None
        if not args.no_register:
            from serving.store import register_bundle

            tag = register_bundle(out)
            keep_training_state(meta, manifest.version)
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    print(f"version    {manifest.version}")
    print(f"dim        {manifest.embedding_dim}  (input uint8 [N, {manifest.input_size}, {manifest.input_size}, 3])")
    for name, fig in manifest.parity.items():
        print(f"parity     {name}: max |ONNX - PyTorch| {fig['max_abs_diff']:.2e}, min cosine "
              f"{fig['min_cosine']:.6f}, batch 1 vs {fig['n_images']} diff {fig['batch_1_vs_n_max_abs_diff']:.1e} "
              f"({fig['images']})")
    if args.out is not None:
        print(f"bundle     {args.out}")
    print(f"tag        {tag}" if tag else "tag        (not registered: --no-register)")
    return 0


__all__ = ["main", "parity_inputs"]
