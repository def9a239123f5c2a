"""``byol retrain``: continue BYOL from the served bundle's training state on old + new images, then export,
gate, re-index, promote — each stage writing only new, version-keyed files, so a crash at any point leaves the
served encoder and index untouched and the next run picks up where this one stopped.

Safe from cron / a systemd timer: a lock keeps two runs apart, and no new images means exit 0 with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from serving.paths import checkpoint_file, reports_dir, retrain_dir

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """Retraining cannot proceed; the message says what is missing."""


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
    from serving.contract.sources import iter_image_files

    out, digests = [], set()
    for d in dirs:
        for path in iter_image_files(d):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen and digest not in digests:
                digests.add(digest)
                out.append((path, digest))
    return out


# ---------------------------------------------------------------------------------------------- gate


def gate(candidate_dir: Path, current_dir: Path, eval_spec: str, data_root: str | None, tolerance: float,
         max_train: int = 5000, max_test: int = 2000, seed: int = 0) -> dict:
    """kNN and linear-probe accuracy of both bundles on one fixed labelled set; accept unless worse by > tolerance.

    Both are measured through ONNX Runtime on the same pixels, i.e. exactly what would be served.
    """
    from serving.contract.sources import load_source
    from serving.encoder import OnnxEncoder
    from serving.indexing import embed_batches
    from training.eval import knn_accuracy, linear_probe_accuracy

    report: dict = {"eval_data": eval_spec, "tolerance": tolerance, "max_train": max_train, "max_test": max_test}
    sets: dict[int, tuple] = {}  # input size → the fixed (train, test) subsets, read once for both bundles
    for name, bundle in (("current", current_dir), ("candidate", candidate_dir)):
        enc = OnnxEncoder(bundle)
        if enc.input_size not in sets:
            train = load_source(eval_spec, "train", size=enc.input_size, data_root=data_root)
            test = load_source(eval_spec, "test", size=enc.input_size, data_root=data_root)
            if train.labels is None or test.labels is None:
                raise RetrainError(f"evaluation data {eval_spec!r} has no labels: the gate needs a labelled set")
            tr = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train])
            te = np.sort(np.random.default_rng(seed + 1).permutation(len(test))[:max_test])
            sets[enc.input_size] = (train.subset(tr), test.subset(te))
        train, test = sets[enc.input_size]
        etr, ete = embed_batches(enc, train.images), embed_batches(enc, test.images)
        report[name] = {
            "version": enc.version,
            "knn": knn_accuracy(etr, train.labels, ete, test.labels),
            "probe": linear_probe_accuracy(etr, train.labels, ete, test.labels),
        }
    cur, cand = report["current"], report["candidate"]
    reasons = [f"{m} {cand[m]:.4f} < {cur[m]:.4f} - {tolerance}" for m in ("knn", "probe")
               if cand[m] < cur[m] - tolerance]
    report["accepted"] = not reasons
    report["reasons"] = reasons
    return report


def print_gate(report: dict) -> None:
    cur, cand = report["current"], report["candidate"]
    print(f"\nevaluation gate on {report['eval_data']} (tolerance {report['tolerance']}):")
    print(f"  {'':10s} {'version':30s} {'kNN':>8s} {'probe':>8s}")
    for name, r in (("current", cur), ("candidate", cand)):
        print(f"  {name:10s} {r['version']:30s} {r['knn']:8.4f} {r['probe']:8.4f}")
    verdict = "ACCEPTED" if report["accepted"] else "REJECTED: " + "; ".join(report["reasons"])
    print(f"  → {verdict}")


# ---------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol retrain", description=__doc__)
    p.add_argument("--from", dest="parent", default=None,
                   help="bundle version to continue from (default: the served one, see release.json)")
    p.add_argument("--new-data", nargs="+", required=True, help="folder(s) of newly arrived unlabeled images")
    p.add_argument("--replay", type=float, default=1.0,
                   help="old images replayed per new image (default 1.0: a 50/50 mix; 0 = new images only)")
    p.add_argument("--steps", type=int, default=300, help="BYOL steps for this retrain (schedules restart)")
    p.add_argument("--minutes", type=float, default=None, help="time budget for the training stage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override (as in byol train)")
    p.add_argument("--eval-data", default="fashion-mnist", help="labelled set for the gate (train/test splits)")
    p.add_argument("--data-root", default=None, help="root of the old / evaluation dataset files")
    p.add_argument("--eval-max-train", type=int, default=5000, help="gate: labelled reference images (kNN/probe fit)")
    p.add_argument("--eval-max-test", type=int, default=2000, help="gate: held-out images scored")
    p.add_argument("--tolerance", type=float, default=0.01, help="accepted drop in kNN and probe accuracy")
    p.add_argument("--no-promote", action="store_true", help="gate and register, but do not promote")
    p.add_argument("--url", default=None, help="running server to reload after promotion")
    p.add_argument("--token", default=None, help="admin token for --url (default: $BYOL_ADMIN_TOKEN)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from filelock import FileLock, Timeout

    retrain_dir().mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(retrain_dir() / "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another byol retrain is running (lock {lock.lock_file}); nothing to do")
        return 0
    try:
        return _retrain(args)
    finally:
        lock.release()


def _retrain(args) -> int:
    from clients.cli import main as byol
    from serving.contract.bundle import read_bundle
    from serving.release import current_version, promote
    from serving.store import bundle_path

    parent = (args.parent or current_version() or "latest").split(":", 1)[-1]
    parent_dir = bundle_path(parent)
    _, parent_manifest = read_bundle(parent_dir)
    parent = parent_manifest.version
    ckpt = checkpoint_file(parent)
    if not ckpt.is_file():
        raise RetrainError(f"no training checkpoint for bundle {parent} at {ckpt}: export it with 'byol export' "
                           "from a training run so retrain can resume it")

    new = find_new_images(args.new_data, load_seen())
    if not new:
        print(f"no new images in {', '.join(args.new_data)} since the last retrain; nothing to do")
        return 0
    new_fp = hashlib.sha256("".join(sorted(d for _, d in new)).encode()).hexdigest()
    run_dir = retrain_dir() / "runs" / f"{parent}-{new_fp[:12]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"retraining {parent} on {len(new)} new image(s) → {run_dir}")

    candidate = _candidate(args, parent, parent_manifest, ckpt, new, new_fp, run_dir)
    version, report = candidate["version"], candidate["gate"]
    print_gate(report)
    if report["accepted"] and not args.no_promote:
        for argv in (["index", "build", "--model", version, "--collection"],
                     *([["probe", "fit", "--model", version, "--data", args.eval_data,
                         *(["--data-root", args.data_root] if args.data_root else [])]]
                       if _has_probe(parent) else [])):
            t0 = time.monotonic()
            if byol(argv) != 0:
                raise RetrainError(f"'byol {' '.join(argv)}' failed; {version} stays registered, unpromoted")
            log.info("%s: %.0f s", argv[0], time.monotonic() - t0)
        promote(version, reason=f"retrain of {parent} on {len(new)} new images")
        print(f"promoted {version} (rollback: byol rollback)")
        if args.url:
            from serving.release import _reload

            _reload(args.url, args.token, version)
    else:
        print(f"{version} stays in the model store, unpromoted")
    mark_seen({d for _, d in new})
    return 0


def _has_probe(version: str) -> bool:
    from serving.paths import probe_dir

    return probe_dir(version).exists()


def _candidate(args, parent: str, parent_manifest, ckpt: Path, new, new_fp: str, run_dir: Path) -> dict:
    """Train → export → gate → register, once per (parent, new images): a rerun reuses finished stages."""
    from serving.contract.atomic import atomic_write, atomic_write_json
    from serving.contract.bundle import read_bundle
    from serving.contract.image import ImageError, load
    from serving.contract.sources import ImageSet, load_source
    from serving.store import bundle_path, register_bundle
    from training.artifact import load_encoder
    from training.config import TrainConfig, apply_overrides
    from training.export import export_to_temp
    from training.train import train

    done = run_dir / "candidate.json"
    if done.is_file():
        print(f"reusing the candidate of an earlier, interrupted run ({done})")
        return json.loads(done.read_text())

    cfg = TrainConfig.from_dict(parent_manifest.training_config)
    overrides = [f"train.steps={args.steps}", "train.epochs=None", f"train.max_minutes={args.minutes}",
                 *args.overrides]
    cfg = apply_overrides(cfg, overrides)
    size = cfg.encoder.input_size
    images, skipped = [], 0
    for path, _ in new:
        try:
            images.append(load(path.read_bytes(), size))
        except (ImageError, OSError) as exc:
            skipped += 1
            log.warning("skipping %s: %s", path, exc)
    if not images:
        raise RetrainError(f"none of the {len(new)} new files could be read as images")
    new_set = ImageSet(np.stack(images), uris=[str(p) for p, _ in new][: len(images)])
    parts = [new_set.images]
    n_old = int(round(args.replay * len(new_set)))
    if n_old:
        old = load_source(cfg.data.source, "train", size=size, data_root=args.data_root or cfg.data.data_root)
        idx = np.random.default_rng(cfg.train.seed).permutation(len(old))[: min(n_old, len(old))]
        parts.append(old.images[np.sort(idx)])
    mix = ImageSet(np.concatenate(parts))
    print(f"training mix: {len(new_set)} new + {len(mix) - len(new_set)} replayed old images "
          f"({skipped} unreadable skipped)")

    resume = (run_dir / "checkpoint.pt").is_file() and not (run_dir / "encoder.pt").is_file()
    if not (run_dir / "encoder.pt").is_file():
        train(cfg, run_dir, resume=resume, data=mix, init_from=None if resume else ckpt)
    encoder, meta = load_encoder(run_dir / "encoder.pt")
    meta = dict(meta, data_fingerprint=mix.fingerprint(), parent_version=parent)
    meta.setdefault("metrics", {})["new_images"] = len(new_set)
    parity = load_source(args.eval_data, "test", size=size, data_root=args.data_root).images[:16]
    tmp_bundle, manifest = export_to_temp(encoder, meta=meta, parity_images=parity, parent_version=parent)
    try:
        report = gate(tmp_bundle, bundle_path(parent), args.eval_data, args.data_root, args.tolerance,
                      args.eval_max_train, args.eval_max_test)
        atomic_write_json(tmp_bundle / "gate_report.json", report)
        read_bundle(tmp_bundle)
        tag = register_bundle(tmp_bundle)
    finally:
        shutil.rmtree(tmp_bundle.parent, ignore_errors=True)
    atomic_write_json(reports_dir() / f"{manifest.version}.json", report)
    target = checkpoint_file(manifest.version)
    atomic_write(target, lambda tmp: shutil.copyfile(run_dir / "checkpoint.pt", tmp))
    candidate = {"version": manifest.version, "tag": tag, "gate": report}
    atomic_write_json(done, candidate)
    return candidate


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
