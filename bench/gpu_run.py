"""Stage 4 of ``bench/gpu.sh``: the ``fmnist-gpu`` run under its time budget (5 minutes of training), its figures
written as JSON the moment it ends: steps, epochs, images/s, the precision it measured and chose, and the kNN curve
the monitor logged (every ``train.knn_every`` steps, test-split queries against a subset of train).

The standard evaluation (60k bank, kNN@20/200, probe, raw pixels) is the next stage, ``bench.gpu_eval``, in a
process of its own: a run that overruns its timeout then loses its own figures only, and the encoder it leaves
(``<run>/encoder.pt``) is scored separately. Needs torch, torchvision, numpy, scipy and the IDX files only (no FAISS,
no BentoML, no ONNX Runtime): what a bare GPU box has.

    python -m bench.gpu_run --data-root DIR --run DIR --out JSON [--minutes 5] [--preset fmnist-gpu] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def overrides(args: argparse.Namespace) -> list[str]:
    """The command line as config overrides: the data folder and budget first, then ``--set`` (which wins)."""
    return [*([f"data.data_root={args.data_root}"] if args.data_root else []),
            *([f"train.max_minutes={args.minutes}"] if args.minutes else []), *args.overrides]


def row(cfg, res, summary: dict, train_s: float) -> dict:
    """What the JSON reports of one finished run."""
    m = res.metrics
    n = summary.get("n_images") or 0
    return {"steps": res.steps, "total_steps": m.get("total_steps"), "stopped": m.get("stopped"),
            "train_s": round(train_s, 1), "train_minutes": m.get("train_minutes"),
            "images_per_s": m.get("images_per_s"), "batch_size": cfg.train.batch_size, "n_images": n,
            "epochs": round(res.steps * cfg.train.batch_size / n, 2) if n else None,
            "precision": m.get("precision"), "final_loss": m.get("final_loss"),
            "embedding_std": m.get("embedding_std"), "monitor_knn": m.get("holdout_knn"),
            "knn_curve": {int(k): v["knn"] for k, v in summary.get("history", {}).items()},
            "config": summary.get("config")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--minutes", type=float, default=None, help="training budget (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run", type=Path, default=Path("runs/gpu-run"), help="run directory (replaced)")
    p.add_argument("--out", type=Path, required=True, help="JSON path")
    args = p.parse_args(argv)
    import logging

    from bench.gpu_common import write
    from training.config import apply_overrides, preset
    from training.train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # precision, budget
    given = overrides(args)
    cfg = apply_overrides(preset(args.preset), given)
    shutil.rmtree(args.run, ignore_errors=True)
    t0 = time.time()
    res = train(cfg, args.run)
    train_s = time.time() - t0
    summary = json.loads((args.run / "summary.json").read_text())
    out = row(cfg, res, summary, train_s)
    write(args.out, "gpu_run", {"preset": args.preset, "overrides": given, "run": str(args.run),
                                "encoder": str(res.encoder_path), **out})
    prec = out["precision"] or {}
    print(f"{args.preset}: {res.steps} steps ({out['epochs']} epochs, batch {out['batch_size']}) in "
          f"{train_s / 60:.1f} min, {out['images_per_s']} img/s, {prec.get('precision')}"
          f"{'+channels_last' if prec.get('channels_last') else ''}; monitor kNN {out['monitor_knn']}  → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
