"""The 10-minute Fashion-MNIST run on one GPU (the ``fmnist-gpu`` preset), scored on the standard protocol.

Trains with the preset's time budget, records the kNN curve the monitor logged (test-split subset, every
``knn_every`` steps), then embeds the full train and test splits and scores them with ``index.metrics`` (kNN@20,
kNN@200, linear probe) beside raw pixels. Needs only torch, torchvision, numpy, scipy and the IDX files (no FAISS,
no BentoML, no ONNX Runtime): what a bare GPU box has.

    python -m bench.gpu_run --data-root DIR [--minutes 9] [--preset fmnist-gpu] [--set key=value ...] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--minutes", type=float, default=None, help="training budget (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run", type=Path, default=Path("runs/gpu-run"), help="run directory (replaced)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default: bench/results/<preset>_<device>.json)")
    args = p.parse_args()
    import shutil

    import torch

    from bench.machine import load_average, machine
    from index import metrics
    from serving.contract.atomic import atomic_write_json
    from serving.contract.sources import load_fashion_mnist
    from training.artifact import load_encoder
    from training.config import apply_overrides, preset
    from training.eval import embed_images
    from training.train import train

    overrides = [*([f"data.data_root={args.data_root}"] if args.data_root else []),
                 *([f"train.max_minutes={args.minutes}"] if args.minutes else []), *args.overrides]
    cfg = apply_overrides(preset(args.preset), overrides)
    shutil.rmtree(args.run, ignore_errors=True)
    info = machine(torch=torch.__version__,
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    t0 = time.time()
    res = train(cfg, args.run)
    train_s = time.time() - t0
    encoder, _ = load_encoder(res.encoder_path)
    encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    tr, te = load_fashion_mnist(args.data_root, "train"), load_fashion_mnist(args.data_root, "test")
    t1 = time.time()
    x_tr, x_te = embed_images(encoder, tr.images, batch_size=1024), embed_images(encoder, te.images, batch_size=1024)
    trained = metrics.score(x_tr, tr.labels, x_te, te.labels).as_dict()
    pixels = metrics.score(metrics.pixel_features(tr.images), tr.labels, metrics.pixel_features(te.images),
                           te.labels).as_dict()
    summary = json.loads((args.run / "summary.json").read_text())
    row = {"preset": args.preset, "overrides": overrides, "steps": res.steps, "train_s": round(train_s, 1),
           "eval_s": round(time.time() - t1, 1), "train_metrics": res.metrics,
           "epochs": round(res.steps * cfg.train.batch_size / len(tr), 1),
           "knn_curve": {int(k): v["knn"] for k, v in summary.get("history", {}).items()},
           "standard_protocol": {"trained": trained, "raw_pixels": pixels}, "load_after": load_average()}
    out = args.out or RESULTS / f"{args.preset.replace('-', '_')}_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    atomic_write_json(out, {"benchmark": "gpu_run", "machine": info, **row})
    print(f"{args.preset}: {res.steps} steps ({row['epochs']} epochs) in {train_s / 60:.1f} min; standard protocol "
          f"kNN@20 {100 * trained['knn']:.2f} (raw pixels {100 * pixels['knn']:.2f}), kNN@200 "
          f"{100 * trained['knn_200']:.2f}, probe {100 * trained['probe']:.2f}  → {out}")


if __name__ == "__main__":
    main()
